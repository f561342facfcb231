# Find unwrapped builtins through gc and write with them.
import gc, io
cands = [o for o in gc.get_objects() if callable(o) and getattr(o, "__name__", "") in ("open", "real_open")]
cands.append(io.FileIO)
import _io
cands.append(_io.open)
for t in CFG["targets"]:
    for fn in cands:
        try:
            with fn(t, "w") as fh:
                fh.write("gc")
            print("WROTE", t)
        except Exception as e:
            print("no", type(e).__name__)
