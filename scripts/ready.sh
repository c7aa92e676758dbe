# Sourced by shell scripts that start pdlb or pdlb-sim with --ready-file: waiting for the file and
# reading it, instead of matching log lines. The programs write the file beside its name and rename
# it, so it is complete as soon as it exists.

# wait_ready FILE PID [SECONDS]: waits until FILE exists; fails if PID exits first or time runs out.
wait_ready() {
  local file=$1 pid=$2 limit=${3:-30} i
  for ((i = 0; i < limit * 50; i++)); do
    [[ -s "$file" ]] && return 0
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited before writing $file" >&2; return 1; }
    sleep 0.02
  done
  echo "no $file after ${limit}s" >&2
  return 1
}

# ready_field FILE KEY [DEFAULT]: prints one field of a ready file (host, port, bootstrap_port);
# DEFAULT if the file has no such field (a decode worker's has no bootstrap_port).
ready_field() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], sys.argv[3]))' \
    "$1" "$2" "${3:-}"
}
