"""`reslab` with numerics that do not depend on which x86-64 CPU runs it (for the golden-run tests).

Float results of the same computation differ between CPUs when kernels are picked by instruction
set (AVX2 on one host, AVX-512 or AMX on another): the summation order changes, so do the last
bits. Golden digests recorded on one host must hold on every host CI may draw, so these runs use
kernels whose arithmetic is fixed:
  - ATen's portable kernels (ATEN_CPU_CAPABILITY=default, set by the caller before torch starts);
  - MKL in conditional-numerical-reproducibility mode (MKL_CBWR=COMPATIBLE, set by the caller);
  - no oneDNN (mkldnn) and no NNPACK convolutions: they choose kernels and blockings by CPU;
  - one thread (OMP_NUM_THREADS=1 and train.threads=1, set by the caller).
Slow, but the tests train for a few steps only.

Usage: python tests/train/portable_reslab.py train ...   (the `reslab` command line)
"""

from __future__ import annotations

import sys

import torch

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def main() -> int:
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    from reslab.cli import main as reslab_main

    return reslab_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
