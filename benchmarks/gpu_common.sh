# Sourced by the GPU check scripts: output folder ($OUT, default benchmarks/results), the repository on
# PYTHONPATH (vitkit need not be installed), the interpreter ($PY), and `run SECONDS CMD...`, which appends the
# command and its output to $log and notes a failure or timeout without stopping the script.
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:.
PY=${PY:-python}
run() { echo "### $*" >>"$log"; timeout "$1" "${@:2}" >>"$log" 2>&1 || echo "!!! exit $? for: $*" >>"$log"; }
