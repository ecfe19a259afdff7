#!/usr/bin/env bash
# Fingerprints of eight fixed-seed runs (metrics.json without times/paths/versions, and
# history.csv without its seconds column), to show that a refactor changes no result:
#   scripts/fingerprint_runs.sh /tmp/before   # on the old commit
#   scripts/fingerprint_runs.sh /tmp/after    # on the new one; the two listings must be equal
set -u
out=$1
rm -rf "$out"
mkdir -p "$out"
run() {
  name=$1
  shift
  kdrun "$@" runtime.num_threads=1 store_dir="$out/store" hydra.run.dir="$out/$name" \
    >/dev/null 2>"$out/$name.err" || echo "FAIL $name"
}
run smoke experiment=smoke
run smoke_fashion experiment=smoke dataset=fashion_mnist
run smoke_dkd experiment=smoke method=dkd
run smoke_crd experiment=smoke method=crd
run smoke_dml experiment=smoke method=dml
run smoke_fitnet experiment=smoke method=fitnet student=cnn
run omit experiment=omit_class student.train.epochs=5 teacher.train.epochs=3
run fashion dataset=fashion_mnist teacher=cnn student=mlp teacher.train.epochs=1 \
  student.train.epochs=2 dataset.limit_train=20000
python - "$out" <<'PY'
import hashlib, json, pathlib, sys

VOLATILE = ("time", "seconds", "wall", "started", "finished", "host", "duration", "date",
            "dir", "path", "version", "python", "platform", "command", "cpu")


def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if not any(s in k for s in VOLATILE)}
    return [strip(v) for v in o] if isinstance(o, list) else o


out = pathlib.Path(sys.argv[1])
for m in sorted(out.glob("*/metrics.json")):
    d = strip(json.loads(m.read_text()))
    rows = [",".join(r.split(",")[:8]) for r in (m.parent / "history.csv").read_text().splitlines()]
    h = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    h2 = hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
    print(m.parent.name, "metrics", h, "history", h2, "student_acc", d["student"]["test_acc"])
PY
