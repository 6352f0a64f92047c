#!/usr/bin/env bash
# Same-run comparison of two revisions' hot path (docs/BENCHMARKS.md, "Session split (issue
# 12): old vs new in the same run").
#
#   scripts/bench-compare.sh <old-rev> [<new-rev>]      (new-rev defaults to HEAD)
#
# 1. Builds each revision in a detached git worktree of its own (BENCH_COMPARE_DIR/<rev>,
#    default target/bench-compare/<rev>, each with its own target dir): the `decode` and
#    `ingest` benches as they are at that revision (`cargo bench --no-run`, the bench profile:
#    release, fat LTO, one codegen unit; ingest also builds ib-stream and tws-sim), and the
#    callgrind harnesses in scripts/bench-compare/ (copied into the worktree's examples/,
#    the same source for both revisions).
# 2. Wall clock: ROUNDS rounds (default 6), each running the decode bench and then the ingest
#    bench (INGEST_SECONDS, default 3) of both revisions, old and new interleaved in
#    alternating order (old new | new old | old new ...) so that a drift of the machine's
#    load hits both alike. The ingest bench runs unmodified: ours, then the ibapi crate
#    (not used here); its Python peers are skipped because a worktree has no .venv.
#    The simulator: the ingest bench runs the tws-sim binary of its own target dir, and
#    tws-sim changes between revisions too; so that the engine is the only difference, both
#    revisions' benches get the same tws-sim binary there (INGEST_SIM=new, the default, or
#    old; INGEST_SIM=own leaves each revision its own simulator).
#    Figures: decode text_ns / proto_ns (its summary: the mixed stream's p10 round, ns per
#    frame), ingest ours ticks/s and ours ticks per engine CPU-second; per revision the
#    median over rounds, and new/old of the medians (ns: above 1 = new slower; ticks/s:
#    below 1 = new slower).
# 3. Instructions (valgrind callgrind, independent of load): per frame of the decode path
#    (decode_callgrind.rs) and per tick of the engine's receive path through `Ingest`
#    (engine_callgrind.rs), at server versions 178 (text) and 226 (protobuf); and, for a
#    revision that has the sans-IO Session, through `Session::on_received`
#    (session_callgrind.rs). Only the harness's measure function is counted.
#
# Environment: ROUNDS, INGEST_SECONDS, INGEST_SIM, WALL=0 (skip 2), CALLGRIND=0 (skip 3),
# DECODE_CG_ROUNDS (passes of the 2 000-frame stream, default 20), ENGINE_CG_ROUNDS (ticks
# of each of 4 kinds, default 5000), BENCH_COMPARE_DIR, CLEAN=1 (remove the worktrees and
# their targets at the end). Last line:
#   bench-compare old=<rev> new=<rev> decode_text_ratio= decode_proto_ratio= ingest_ratio=
#   ingest_cpu_ratio= decode_text_ir_ratio= decode_proto_ir_ratio= engine_text_ir_ratio=
#   engine_proto_ir_ratio= session_text_ir_ratio= session_proto_ir_ratio=
# (every ratio new/old; `n/a` when not measured).
set -euo pipefail

usage() {
  echo "usage: $0 <old-rev> [<new-rev>]" >&2
  exit 2
}
[[ $# -ge 1 && $# -le 2 ]] || usage

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel)"
old="$(git -C "$repo" rev-parse --short=7 "$1^{commit}")"
new="$(git -C "$repo" rev-parse --short=7 "${2:-HEAD}^{commit}")"
[[ "$old" != "$new" ]] || {
  echo "old and new are the same commit ($old)" >&2
  exit 2
}
dir="${BENCH_COMPARE_DIR:-$repo/target/bench-compare}"
rounds="${ROUNDS:-6}"
ingest_seconds="${INGEST_SECONDS:-3}"
decode_cg_rounds="${DECODE_CG_ROUNDS:-20}"
engine_cg_rounds="${ENGINE_CG_ROUNDS:-5000}"
mkdir -p "$dir"
log="$dir/bench-compare-$old-$new-$(date +%Y%m%d-%H%M%S).log"
exec > >(tee "$log") 2>&1
echo "bench-compare: old=$old new=$new dir=$dir rounds=$rounds INGEST_SECONDS=$ingest_seconds"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(rustc --version)"

# ---- build ------------------------------------------------------------------------------

declare -A decode_bin ingest_bin cg_decode cg_engine cg_session

# put <src> <dst>: copy unless identical (a new mtime would rebuild the example).
put() { cmp -s "$1" "$2" || cp "$1" "$2"; }

build() {
  local rev="$1" wt="$dir/$1"
  if [[ ! -e "$wt/.git" ]]; then
    git -C "$repo" worktree add --detach "$wt" "$rev" >/dev/null
  fi
  [[ "$(git -C "$wt" rev-parse --short=7 HEAD)" == "$rev" ]] || {
    echo "$wt is not at $rev" >&2
    exit 1
  }
  mkdir -p "$wt/examples"
  put "$here/bench-compare/decode_callgrind.rs" "$wt/examples/bench_compare_decode.rs"
  put "$here/bench-compare/engine_callgrind.rs" "$wt/examples/bench_compare_engine.rs"
  local examples=(--example bench_compare_decode --example bench_compare_engine)
  if [[ -d "$wt/src/engine/session" ]]; then
    put "$here/bench-compare/session_callgrind.rs" "$wt/examples/bench_compare_session.rs"
    examples+=(--example bench_compare_session)
  fi
  echo "== build $rev in $wt"
  local out
  # Each revision its own target dir: the ingest bench runs the ib-stream and tws-sim
  # binaries of its target dir.
  out="$(cd "$wt" && CARGO_TARGET_DIR="$wt/target" cargo bench --locked --no-run \
    --bench decode --bench ingest 2>&1)" || {
    echo "$out" >&2
    exit 1
  }
  decode_bin[$rev]="$wt/$(sed -n 's/.*Executable benches\/decode.rs (\(.*\))/\1/p' <<<"$out" | tail -1)"
  ingest_bin[$rev]="$wt/$(sed -n 's/.*Executable benches\/ingest.rs (\(.*\))/\1/p' <<<"$out" | tail -1)"
  [[ -x "${decode_bin[$rev]}" && -x "${ingest_bin[$rev]}" ]] || {
    echo "$out" >&2
    echo "bench executables of $rev not found" >&2
    exit 1
  }
  (cd "$wt" && CARGO_TARGET_DIR="$wt/target" cargo build --locked --profile bench \
    "${examples[@]}" 2>&1 | tail -1)
  cg_decode[$rev]="$wt/target/release/examples/bench_compare_decode"
  cg_engine[$rev]="$wt/target/release/examples/bench_compare_engine"
  cg_session[$rev]=""
  if [[ -d "$wt/src/engine/session" ]]; then
    cg_session[$rev]="$wt/target/release/examples/bench_compare_session"
  fi
}
build "$old"
build "$new"

# The simulator the ingest benches run (see the top): each revision's own binary is kept
# as target/bench-compare-tws-sim.own; target/release/tws-sim (the path compiled into the
# bench) becomes the chosen one, also copied to bench-compare-tws-sim.installed so that a
# later run tells a fresh cargo build (save it as own) from the file put there (keep own).
# rm before cp: cargo hard-links target/release/tws-sim to its deps copy.
ingest_sim="${INGEST_SIM:-new}"
for rev in "$old" "$new"; do
  t="$dir/$rev/target"
  if [[ ! -e "$t/bench-compare-tws-sim.own" ]] ||
    ! cmp -s "$t/release/tws-sim" "$t/bench-compare-tws-sim.installed"; then
    cp "$t/release/tws-sim" "$t/bench-compare-tws-sim.own.tmp"
    mv "$t/bench-compare-tws-sim.own.tmp" "$t/bench-compare-tws-sim.own"
  fi
done
for rev in "$old" "$new"; do
  case "$ingest_sim" in
    own) src="$dir/$rev/target/bench-compare-tws-sim.own" ;;
    old) src="$dir/$old/target/bench-compare-tws-sim.own" ;;
    new) src="$dir/$new/target/bench-compare-tws-sim.own" ;;
    *)
      echo "INGEST_SIM must be own, old or new" >&2
      exit 2
      ;;
  esac
  rm -f "$dir/$rev/target/release/tws-sim"
  cp "$src" "$dir/$rev/target/release/tws-sim"
  cp "$src" "$dir/$rev/target/bench-compare-tws-sim.installed"
done
echo "ingest benches run tws-sim of: $ingest_sim"

# ---- helpers ----------------------------------------------------------------------------

# key=value from a line: field <line> <key>
field() { sed -n "s/.*[ ]$2=\([^ ]*\).*/\1/p" <<<" $1" | head -1; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else printf "%.4g\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() {
  if [[ "$1" == n/a || "$2" == n/a || -z "$1" || -z "$2" ]]; then echo n/a; else awk -v a="$1" -v b="$2" 'BEGIN { if (a == 0) print "n/a"; else printf "%.3f\n", b / a }'; fi
}

declare -A res # res[<rev>.<figure>]="values ..."

# ---- wall clock -------------------------------------------------------------------------

run_wall() {
  local rev="$1" round="$2" line ours
  line="$(cd "$dir/$rev" && "${decode_bin[$rev]}" | grep '^bench=decode')"
  res[$rev.text_ns]+=" $(field "$line" text_ns)"
  res[$rev.proto_ns]+=" $(field "$line" proto_ns)"
  echo "round $round $rev decode: $line"
  local out
  out="$(cd "$dir/$rev" && INGEST_SECONDS="$ingest_seconds" "${ingest_bin[$rev]}")"
  ours="$(grep '^ours:' <<<"$out")"
  # ours: <tps> ticks/s (engine RSS <mb> MB; <per_cpu> ticks per engine CPU-second)
  res[$rev.tps]+=" $(awk '{print $2}' <<<"$ours")"
  res[$rev.cpu]+=" $(sed -n 's/.*; \([0-9]*\) ticks per engine CPU-second.*/\1/p' <<<"$ours")"
  echo "round $round $rev ingest: $ours"
}

if [[ "${WALL:-1}" != 0 ]]; then
  echo "== wall clock: $rounds rounds, load before: $(uptime)"
  for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then order=("$old" "$new"); else order=("$new" "$old"); fi
    for rev in "${order[@]}"; do run_wall "$rev" "$r"; done
  done
  echo "== load after: $(uptime)"
fi

# ---- instructions -----------------------------------------------------------------------

# callgrind <fn> <exe> <args...>: instructions counted inside <fn> (and its callees).
callgrind() {
  local fn="$1" exe="$2" out
  shift 2
  out="$(mktemp "$dir/callgrind.XXXXXX")"
  valgrind --tool=callgrind --callgrind-out-file="$out" --collect-atstart=no \
    --toggle-collect="*$fn*" "$exe" "$@" >"$out.stdout" 2>"$out.stderr" || {
    cat "$out.stdout" "$out.stderr" >&2
    exit 1
  }
  local ir
  ir="$(sed -n 's/^\(totals\|summary\): *\([0-9]*\).*/\2/p' "$out" | head -1)"
  echo "$ir $(cat "$out.stdout")"
  rm -f "$out" "$out.stdout" "$out.stderr"
}

if [[ "${CALLGRIND:-1}" != 0 ]]; then
  echo "== instructions (callgrind)"
  for rev in "$old" "$new"; do
    for v in 178 226; do
      form=text
      [[ $v == 226 ]] && form=proto
      o="$(callgrind measure_decode "${cg_decode[$rev]}" "$v" "$decode_cg_rounds")"
      n="$(field "$o" frames)"
      res[$rev.decode_${form}_ir]="$(awk -v i="${o%% *}" -v n="$n" 'BEGIN {printf "%.1f", i / n}')"
      echo "$rev decode v$v: ${o%% *} instructions / $n frames = ${res[$rev.decode_${form}_ir]} per frame"
      o="$(callgrind measure_ingest "${cg_engine[$rev]}" "$v" "$engine_cg_rounds")"
      n="$(field "$o" ticks)"
      res[$rev.engine_${form}_ir]="$(awk -v i="${o%% *}" -v n="$n" 'BEGIN {printf "%.1f", i / n}')"
      echo "$rev engine (Ingest::process) v$v: ${o%% *} instructions / $n ticks = ${res[$rev.engine_${form}_ir]} per tick"
      if [[ -n "${cg_session[$rev]}" ]]; then
        o="$(callgrind measure_session "${cg_session[$rev]}" "$v" "$engine_cg_rounds")"
        n="$(field "$o" ticks)"
        res[$rev.session_${form}_ir]="$(awk -v i="${o%% *}" -v n="$n" 'BEGIN {printf "%.1f", i / n}')"
        echo "$rev engine (Session::on_received) v$v: ${o%% *} instructions / $n ticks = ${res[$rev.session_${form}_ir]} per tick"
      fi
    done
  done
fi

# ---- summary ----------------------------------------------------------------------------

echo "== summary (medians over $rounds rounds; ratios new/old)"
summary="bench-compare old=$old new=$new"
row() { # row <label> <key> <summary-key>
  local a b
  a="$(median <<<"${res[$old.$2]:-}")"
  b="$(median <<<"${res[$new.$2]:-}")"
  printf '%-44s old %-12s new %-12s new/old %s\n' "$1" "$a" "$b" "$(ratio "$a" "$b")"
  summary+=" $3=$(ratio "$a" "$b")"
}
row "decode text v178, ns/frame (mixed, p10 round)" text_ns decode_text_ratio
row "decode protobuf v226, ns/frame" proto_ns decode_proto_ratio
row "ingest ours, ticks/s" tps ingest_ratio
row "ingest ours, ticks per engine CPU-second" cpu ingest_cpu_ratio
row "decode text v178, instructions/frame" decode_text_ir decode_text_ir_ratio
row "decode protobuf v226, instructions/frame" decode_proto_ir decode_proto_ir_ratio
row "engine Ingest::process v178, instr/tick" engine_text_ir engine_text_ir_ratio
row "engine Ingest::process v226, instr/tick" engine_proto_ir engine_proto_ir_ratio
# The session path exists only on the new side of issue 12: compared with the old Ingest loop.
for form in text proto; do
  a="${res[$old.session_${form}_ir]:-${res[$old.engine_${form}_ir]:-n/a}}"
  b="${res[$new.session_${form}_ir]:-n/a}"
  printf '%-44s old %-12s new %-12s new/old %s\n' "engine path (new: Session) $form, instr/tick" "$a" "$b" "$(ratio "$a" "$b")"
  summary+=" session_${form}_ir_ratio=$(ratio "$a" "$b")"
done
for rev in "$old" "$new"; do
  for k in text_ns proto_ns tps cpu; do echo "raw $rev $k:${res[$rev.$k]:-}"; done
done
echo "log: $log"
echo "$summary"

if [[ "${CLEAN:-0}" == 1 ]]; then
  for rev in "$old" "$new"; do git -C "$repo" worktree remove --force "$dir/$rev"; done
fi
