# Sourced by the GPU run scripts: a global time budget and one capped stage at a time.
# Sets OUT (default /tmp/decode_gpu), PY and END (now + BUDGET_S, default 570 s).
OUT=${OUT:-/tmp/decode_gpu}; mkdir -p "$OUT"; export OUT
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
END=$(( $(date +%s) + ${BUDGET_S:-570} ))

# stage NAME CAP_S COMMAND...: run COMMAND for at most CAP_S seconds and never past END.
stage() {
  local name=$1 cap=$2; shift 2
  local left=$(( END - $(date +%s) ))
  (( left < cap )) && cap=$left
  if (( cap < 30 )); then echo "=== $name: skipped, ${left}s left"; return; fi
  echo "=== $name (cap ${cap}s)"
  local began=$(date +%s)
  DEADLINE_S=$cap timeout "$cap" "$@" 2>&1 | grep -v -i -E "warn|^\s*$" | tail -n 80
  echo "--- $name: $(( $(date +%s) - began ))s"
}

# The transformers 4.57.6 wheels (its last Flax release) into /tmp/site, when carried in .whl.
install_flax_anchor() {
  [ -d .whl ] && $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
}
