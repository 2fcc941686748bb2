"""CPython stand-in for MicroPython's `network`: Wi-Fi that is always up."""
STA_IF = 0
AP_IF = 1


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._connected = False

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)

    def connect(self, ssid=None, key=None):
        self._connected = self._active

    def isconnected(self):
        return self._connected

    def disconnect(self):
        self._connected = False

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
