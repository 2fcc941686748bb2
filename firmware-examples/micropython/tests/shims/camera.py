"""CPython stand-in for the ESP32 `camera` module (lemariva/micropython-camera-
driver API): capture() returns JPEG files given to _load(), in turn."""
JPEG = 3
PSRAM = 1
DRAM = 2
FRAME_QVGA, FRAME_VGA, FRAME_SVGA, FRAME_XGA, FRAME_HD, FRAME_SXGA, FRAME_UXGA = (
    5, 8, 9, 10, 11, 12, 13)

_frames = []
_next = 0
_ready = False
settings = {}


def _load(paths):
    global _frames, _next
    _frames = [open(p, "rb").read() for p in paths]
    _next = 0


def init(_id=0, **kw):
    global _ready
    settings.update(kw)
    _ready = True
    return True


def deinit():
    global _ready
    _ready = False


def framesize(v):
    settings["framesize"] = v


def quality(v):
    settings["quality"] = v


def capture():
    global _next
    if not _ready or not _frames:
        return False
    f = _frames[_next % len(_frames)]
    _next += 1
    return f
