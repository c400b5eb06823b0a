"""Count trainable and total parameters of a model + method, the paper's way (task head not counted).

    python experiments/params.py model=roberta-base method=lora method.r=8 method.targets=[q,v]

The last line printed is one JSON object: trainable, total, head, adapter_bytes, percent, modules.
"""

import json

from omegaconf import DictConfig

from lora import methods
from lora.cli import hydra_main, method_kwargs
from lora.models import build_model, default_kind, head_parameter_names
from lora.params import count_parameters


@hydra_main(config_name="params")
def main(cfg: DictConfig) -> None:
    name, kwargs = method_kwargs(cfg.method)
    method_cfg = methods.method_config(name, **kwargs)  # validates before anything is built
    kind = default_kind(cfg.model.name)
    model = build_model(cfg.model.name, kind, pretrained=False, device=cfg.device)
    report = methods.apply(model, name, method_cfg, head=head_parameter_names(model))
    counts = count_parameters(model)
    out = counts.as_dict() | {"percent": round(counts.percent, 4), "modules": len(report.modules)}
    print(
        f"{cfg.model.name} + {name}: {counts.trainable:,} trainable of {counts.total:,} ({counts.percent:.3f}%)"
    )
    print(json.dumps({"model": cfg.model.name, "method": name, **out}))


if __name__ == "__main__":
    main()
