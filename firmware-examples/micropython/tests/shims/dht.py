"""CPython stand-in for MicroPython's `dht`: readings set by the test."""
READING = (21.5, 40.2)   # (temperature C, humidity %RH)
FAIL_NEXT = 0            # make this many measure() calls raise OSError


class _DHT:
    def __init__(self, pin):
        self.pin = pin
        self._t, self._h = None, None

    def measure(self):
        global FAIL_NEXT
        if FAIL_NEXT:
            FAIL_NEXT -= 1
            raise OSError(116)  # ETIMEDOUT, what a missing sensor gives
        self._t, self._h = READING

    def temperature(self):
        return self._t

    def humidity(self):
        return self._h


class DHT11(_DHT):
    pass


class DHT22(_DHT):
    pass
