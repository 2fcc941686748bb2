"""CPython stand-in for MicroPython's `esp32` module: records wake sources."""
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
ext0 = None


def wake_on_ext0(pin, level):
    global ext0
    ext0 = (pin, level)
