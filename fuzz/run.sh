#!/usr/bin/env bash
# Runs the cargo-fuzz targets one after another, each for a bounded time, then prints what each
# did. Not part of CI. Usage:
#   fuzz/run.sh [-t SECONDS] [TARGET...]     default: every target, 600 s each
# Needs `cargo install cargo-fuzz`; on a stable toolchain RUSTC_BOOTSTRAP=1 allows the nightly
# flags it passes. New inputs go to fuzz/work/<target> (ignored by git); the committed seeds in
# fuzz/corpus/<target> are read, never written. Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECONDS:-600}
while getopts "t:h" o; do
    case $o in
        t) secs=$OPTARG ;;
        *) sed -n '2,7p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
all=$(cargo fuzz list)
if [ $# -eq 0 ]; then set -- $all; fi
for t in "$@"; do
    grep -qx "$t" <<<"$all" || { echo "unknown target $t (have: $(echo $all))" >&2; exit 2; }
done

nice -n 19 cargo fuzz build -O
mkdir -p logs
summary=()
status=0
for t in "$@"; do
    mkdir -p "work/$t" "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    echo "== $t: ${secs}s"
    start=$(date +%s)
    rc=0
    # One core for the fuzzer, at the lowest priority: the machine stays usable.
    nice -n 19 cargo fuzz run -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"logs/$t.log" 2>&1 || rc=$?
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
    new=$(($(ls "artifacts/$t" | wc -l) - before))
    kinds=$(ls -t "artifacts/$t" | head -n "$new" | sed 's/-.*//' | sort | uniq -c | xargs || true)
    [ "$rc" -eq 0 ] || status=1
    line=$(printf '%-16s %6ss %12s execs %8s exec/s  exit %s  findings: %s' \
        "$t" "$took" "${execs:-?}" "${rate:-?}" "$rc" "${kinds:-none}")
    echo "$line"
    summary+=("$line")
done
echo
echo "== summary (logs in fuzz/logs/, findings in fuzz/artifacts/<target>/)"
printf '%s\n' "${summary[@]}"
exit $status
