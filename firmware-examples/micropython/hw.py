# Small wrappers around the sensors so main.py does not care which parts are
# fitted. Swap these for a BME280, SHT31, mmWave radar... keeping read().
import machine


class Climate:
    """DHT22/DHT11 on one GPIO, via MicroPython's built-in dht module."""

    def __init__(self, pin, kind="DHT22"):
        import dht
        cls = dht.DHT11 if kind == "DHT11" else dht.DHT22
        self._s = cls(machine.Pin(pin))

    def read(self, tries=3):
        """(temperature C, humidity %RH); OSError after `tries` failed reads.
        DHTs miss a read now and then and need 2 s between reads."""
        err = None
        for _ in range(tries):
            try:
                self._s.measure()
                return self._s.temperature(), self._s.humidity()
            except OSError as e:
                err = e
                sleep_ms(2000)
        raise err


class Motion:
    """PIR sensor, output high while it sees motion. An IRQ latches each
    rising edge, so a short pulse between polls is not missed and a long one
    is reported once."""

    def __init__(self, pin):
        self.pin = machine.Pin(pin, machine.Pin.IN)
        # Already high at boot (or at wake): that motion started unseen.
        self._edge = self.pin.value() == 1
        self.pin.irq(trigger=machine.Pin.IRQ_RISING, handler=self._irq)

    def _irq(self, _pin):
        self._edge = True  # IRQ context: set a flag, nothing else

    def started(self):
        """True once per motion start (rising edge) since the last call."""
        edge = self._edge
        self._edge = False
        return edge

    def active(self):
        return self.pin.value() == 1


try:
    from time import sleep_ms
except ImportError:  # CPython test runner
    from time import sleep

    def sleep_ms(ms):
        sleep(ms / 1000)
