"""lm-evaluation-harness task YAMLs over local JSONL files (nothing downloads): the fields gpt3d's own JSONL tasks use
(`context`, `choices`, `gold`) mapped onto lm-eval's task schema. Used by the backend's parity test and benchmark; a
user can write the same YAML to run an own JSONL task through lm-eval.

    (DIR / "my_task.yaml").write_text(local_task_yaml("my_task", {"train": "train.jsonl", "test": "test.jsonl"}))
    python -m gpt3d.eval.lm_eval_backend --model_args checkpoint=CKPT --tasks my_task --include_path DIR
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

OUTPUT_TYPES = ("multiple_choice", "loglikelihood_rolling")


def local_task_yaml(name: str, data_files: dict[str, str | Path], output_type: str = "multiple_choice",
                    metrics: Sequence[str] = ("acc",)) -> str:
    """The YAML of lm-eval task `name` reading `data_files` ({split: JSONL path}; a `test` split is required, a
    `train` split supplies few-shot demonstrations). multiple_choice: records {"context", "choices", "gold"};
    loglikelihood_rolling: records {"context"}, scored as a whole text."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r}: expected one of {list(OUTPUT_TYPES)}")
    if "test" not in data_files:
        raise ValueError(f"task {name}: data_files needs a 'test' split, got {sorted(data_files)}")
    task = {"task": name, "dataset_path": "json",
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in data_files.items()}},
            "test_split": "test", "output_type": output_type}
    if "train" in data_files:
        task["training_split"] = "train"
    if output_type == "multiple_choice":
        task.update(doc_to_text="{{context}}", doc_to_choice="{{choices}}", doc_to_target="{{gold}}")
    else:
        task.update(doc_to_text="", doc_to_target="{{context}}")
    task["metric_list"] = [{"metric": m} for m in metrics]
    return yaml.safe_dump(task, sort_keys=False)
