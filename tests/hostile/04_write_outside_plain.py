# Plain writes outside the directory (the guard refuses these; the OS must too).
import os, pathlib, shutil
for t in CFG["targets"]:
    for attempt in (lambda: open(t, "w").write("x"),
                    lambda: os.close(os.open(t, os.O_WRONLY | os.O_CREAT)),
                    lambda: pathlib.Path(t).write_text("x"),
                    lambda: os.makedirs(t),
                    lambda: shutil.copy(__file__, t),
                    lambda: open("../../../../../../.." + t, "a").write("x")):
        try:
            attempt()
            print("WROTE", t)
        except Exception as e:
            print("no", t, type(e).__name__)
