"""CPython stand-in for MicroPython's `machine` (ESP32 flavour): pins whose
levels a test sets, deep sleep as an exception the runner catches to
simulate a reboot, RTC memory that survives it."""
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
EXT0_WAKE = PIN_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4

_reset_cause = PWRON_RESET
_wake_reason = 0
_levels = {}      # pin number -> 0/1, set by tests
_pins = {}


class DeepSleep(BaseException):
    """Raised by deepsleep(); BaseException so main.py's error handling
    cannot swallow it, just as nothing runs after a real deepsleep()."""

    def __init__(self, ms):
        super().__init__(ms)
        self.ms = ms


class Reset(BaseException):
    pass


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, num, mode=IN, pull=None, value=None):
        self.num = num
        self.handler = None
        if value is not None:
            _levels[num] = value
        _pins[num] = self

    def value(self, v=None):
        if v is None:
            return _levels.get(self.num, 0)
        _levels[self.num] = 1 if v else 0

    def irq(self, trigger=IRQ_RISING, handler=None):
        self.handler = handler


def _set_level(num, v):
    """Test hook: drive a pin, firing its IRQ on a rising edge."""
    old = _levels.get(num, 0)
    _levels[num] = v
    p = _pins.get(num)
    if p and p.handler and v and not old:
        p.handler(p)


class RTC:
    _mem = b""

    def memory(self, data=None):
        if data is None:
            return RTC._mem
        RTC._mem = bytes(data)


def reset_cause():
    return _reset_cause


def wake_reason():
    return _wake_reason


def deepsleep(ms=0):
    raise DeepSleep(ms)


def lightsleep(ms=0):
    import time
    time.sleep(ms / 1000)


def reset():
    raise Reset()


def unique_id():
    return b"\x24\x6f\x28\x00\x00\x01"
