"""torch.hub entry points for reslab's networks.

    import torch
    net = torch.hub.load("path/to/reslab", "resnet56", source="local")  # fresh (paper) initialisation
    net = torch.hub.load("path/to/reslab", "resnet20", source="local", pretrained=True)  # shipped weights
    net = torch.hub.load("path/to/reslab", "create", "wrn_10_2", source="local", weights="wrn_10_2-fashion-mnist")
    net = torch.hub.load("path/to/reslab", "resnet50", source="local", features_only=True, out_indices=(2, 3, 4))

One entry point per registered network, generated from reslab's model registry (the module's
public callables, which `torch.hub.list` shows for a GitHub repository), and `create(name, ...)`
for any name `create_model` builds (parametric names such as wrn_22_8 too). Keyword arguments go
to `create_model` (num_classes, in_chans, shortcut, features_only, out_indices, ...).

Weights: `pretrained=True` loads the weights shipped with reslab (src/reslab/pretrained) for that
architecture; `weights=SOURCE` takes whatever reslab accepts: a shipped name, a .safetensors file,
a run directory or hf-hub:USER/NAME[@REVISION]. The architecture, classes and input channels then
come from the weights (only num_classes, for a new classifier, features_only and out_indices may
be passed), the network is in eval mode and carries `.preprocess` (how an image becomes its input:
reslab.data.preprocess.Preprocess) and `.weights_meta` (classes, metrics, dataset).

Works from a checkout without installing reslab: the repository's src/ goes first on sys.path.
"""

import sys as _sys  # underscored: torch.hub lists every public callable of this module as a model
from pathlib import Path as _Path

_SRC = _Path(__file__).resolve().parent / "src"
if (_SRC / "reslab").is_dir() and str(_SRC) not in _sys.path:
    _sys.path.insert(0, str(_SRC))

# Module names that torch.hub checks are importable before it calls an entry point.
dependencies = ["torch", "torchvision", "safetensors", "numpy", "PIL", "yaml"]

from reslab.models import list_models as _list_models  # noqa: E402
from reslab.models import model_info as _model_info  # noqa: E402


def _shipped_for(name: str) -> str:
    """The shipped weights of architecture `name` (a ConfigError when there are none or several)."""
    from reslab.errors import ConfigError
    from reslab.weights import read_meta, shipped_names

    shipped = shipped_names()
    matches = [s for s in shipped if read_meta(s).model == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"reslab ships no weights for {name} (shipped: {', '.join(shipped) or 'none'}); "
            "pass weights=FILE, a run directory or hf-hub:USER/NAME instead of pretrained=True"
        )
    raise ConfigError(f"reslab ships several weights for {name}: choose one with weights= ({', '.join(matches)})")


def create(name: str, pretrained: bool = False, weights: str | None = None, **kwargs):
    """Network `name` (any name reslab.create_model builds), fresh or with weights.

    pretrained=True: the weights shipped with reslab for `name`. weights=SOURCE: a shipped name,
    a .safetensors file, a run directory or hf-hub:USER/NAME[@REVISION]; the network then comes
    in eval mode with `.preprocess` and `.weights_meta`. kwargs go to create_model; with weights
    only num_classes (a freshly initialised classifier when it differs), features_only and
    out_indices.
    """
    from reslab.errors import ConfigError
    from reslab.models import create_model
    from reslab.models.features import FeatureNet
    from reslab.weights import load_weights

    if weights is None and pretrained:
        weights = _shipped_for(name)
    if weights is None:
        return create_model(name, **kwargs)
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    num_classes = kwargs.pop("num_classes", None)
    if kwargs:
        raise ConfigError(
            f"{', '.join(sorted(kwargs))}: fixed by the weights {weights}; with weights pass only "
            "num_classes, features_only and out_indices"
        )
    loaded = load_weights(weights)
    if loaded.meta.model != name:
        raise ConfigError(f"weights {weights} hold a {loaded.meta.model}, not a {name}: load {loaded.meta.model!r}")
    net = loaded.model
    if num_classes is not None and num_classes != net.num_classes:
        net.reset_classifier(num_classes)
    out = FeatureNet(net, out_indices).eval() if features_only else net
    out.preprocess, out.weights_meta = loaded.preprocess, loaded.meta
    return out


def _entry(name: str):
    """The entry point of one registered network: create(name, ...) under the network's name."""
    info = _model_info(name)

    def entry(pretrained: bool = False, weights: str | None = None, **kwargs):
        return create(name, pretrained=pretrained, weights=weights, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name}: {info.family}, {info.depth} layers ({info.paper}); native input {info.input_size}x"
        f"{info.input_size}, {info.num_classes} classes by default.\n\n" + (create.__doc__ or "").split("\n\n", 1)[1]
    )
    return entry


for _name in _list_models():
    globals()[_name] = _entry(_name)
