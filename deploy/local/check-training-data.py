#!/usr/bin/env python3
"""Loads likerate training exports with Hugging Face `datasets` and checks them against what
the trainers and OpenAI's fine-tuning expect. Run with the interpreter that
deploy/local/datasets-venv.sh prints (tests/suite/training.rs does).

Usage: check-training-data.py FORMAT FILE...   (FORMAT: openai, dpo, kto, openai-dpo)

Each FILE is loaded with datasets.load_dataset("json", ...), the loader TRL's examples use, and
checked:
  openai      a `messages` column only (TRL SFTTrainer's conversational format); per line a
              user turn then an assistant turn, each a non-empty string (OpenAI's chat
              fine-tuning rules: roles from user/assistant, no empty content, ends with the
              assistant)
  dpo         exactly prompt/chosen/rejected, strings, non-empty (TRL DPOTrainer)
  kto         exactly prompt/completion/label, strings and a bool feature (TRL KTOTrainer)
  openai-dpo  exactly input/preferred_output/non_preferred_output; input.messages of user
              turns with non-empty content; each output one assistant turn with non-empty
              content (OpenAI's preference fine-tuning)

Prints one JSON object per FILE on stdout: {"file", "rows", "columns", "labels" (kto: count of
true, false)}; exits 1 with the first problem on stderr.
"""

import json
import sys

import datasets

EXPECTED = {
    "openai": {"messages"},
    "dpo": {"prompt", "chosen", "rejected"},
    "kto": {"prompt", "completion", "label"},
    "openai-dpo": {"input", "preferred_output", "non_preferred_output"},
}


def fail(file, i, why):
    print(f"{file}: line {i + 1}: {why}", file=sys.stderr)
    sys.exit(1)


def text(file, i, value, what):
    if not isinstance(value, str) or not value.strip():
        fail(file, i, f"{what} is not a non-empty string: {value!r}")


def turn(file, i, message, role, what):
    if not isinstance(message, dict) or set(message) != {"role", "content"}:
        fail(file, i, f"{what} is not a {{role, content}} message: {message!r}")
    if message["role"] != role:
        fail(file, i, f"{what} has role {message['role']!r}, not {role!r}")
    text(file, i, message["content"], f"{what}.content")


def check(fmt, file):
    ds = datasets.load_dataset("json", data_files=file, split="train")
    columns = set(ds.column_names)
    if columns != EXPECTED[fmt]:
        fail(file, 0, f"columns {sorted(columns)}, expected {sorted(EXPECTED[fmt])}")
    labels = {"true": 0, "false": 0}
    if fmt == "kto":
        feature = ds.features["label"]
        if getattr(feature, "dtype", None) != "bool":
            fail(file, 0, f"label feature is {feature}, not bool")
    for i, row in enumerate(ds):
        if fmt == "openai":
            messages = row["messages"]
            if not isinstance(messages, list) or len(messages) < 2:
                fail(file, i, "messages is not a list of at least two turns")
            for j, m in enumerate(messages):
                turn(file, i, m, "user" if j % 2 == 0 else "assistant", f"messages[{j}]")
            if messages[-1]["role"] != "assistant":
                fail(file, i, "the last turn is not the assistant's")
        elif fmt == "dpo":
            for c in ("prompt", "chosen", "rejected"):
                text(file, i, row[c], c)
            if row["chosen"] == row["rejected"]:
                fail(file, i, "chosen and rejected are the same answer")
        elif fmt == "kto":
            text(file, i, row["prompt"], "prompt")
            text(file, i, row["completion"], "completion")
            if not isinstance(row["label"], bool):
                fail(file, i, f"label {row['label']!r} is not a bool")
            labels["true" if row["label"] else "false"] += 1
        else:
            messages = (row["input"] or {}).get("messages")
            if not isinstance(messages, list) or not messages:
                fail(file, i, "input.messages is not a non-empty list")
            for j, m in enumerate(messages):
                turn(file, i, m, "user", f"input.messages[{j}]")
            for c in ("preferred_output", "non_preferred_output"):
                out = row[c]
                if not isinstance(out, list) or len(out) != 1:
                    fail(file, i, f"{c} is not a list of one message")
                turn(file, i, out[0], "assistant", f"{c}[0]")
            if row["preferred_output"][0]["content"] == row["non_preferred_output"][0]["content"]:
                fail(file, i, "preferred and non-preferred outputs are the same answer")
    print(json.dumps({"file": file, "rows": len(ds), "columns": sorted(columns), "labels": labels}))


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in EXPECTED:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    datasets.disable_progress_bars()
    for file in sys.argv[2:]:
        check(sys.argv[1], file)


if __name__ == "__main__":
    main()
