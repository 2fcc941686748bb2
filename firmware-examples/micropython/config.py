# Settings for main.py. Copy both (plus fchunk.py and hw.py) to the board.
# The test runner (tests/run_under_cpython.py) overrides some of these.

ROLE = "sensor"            # "sensor" or "camera"
DEVICE_ID = "hall"         # topic level: home/<id>/... or cameras/<id>/...

WIFI_SSID = "your-ssid"
WIFI_PASSWORD = "your-password"
WIFI_TIMEOUT_S = 20

MQTT_HOST = "192.168.1.10"
MQTT_PORT = 1883           # 8883 with TLS
MQTT_USER = None
MQTT_PASSWORD = None
MQTT_KEEPALIVE_S = 60
MQTT_CA_FILE = None        # e.g. "ca.der" (broker's certs/ca.crt as DER): enables TLS
SOCKET_TIMEOUT_S = 10      # umqtt waits forever for a PUBACK without one

BACKOFF_MIN_S = 1          # reconnect backoff doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 60

NTP_HOST = "pool.ntp.org"  # None: trust the RTC (readings need a real ts)

# Sensor node
SENSOR_INTERVAL_S = 60
DEEP_SLEEP = True          # sleep between readings; wake on timer or PIR
DHT_PIN = 4
DHT_TYPE = "DHT22"         # or "DHT11"
PIR_PIN = 13               # RTC-capable GPIO, so it can wake from deep sleep
SENSOR_QOS = 1

# Camera node (ESP32 with PSRAM, lemariva/micropython-camera-driver firmware)
CAMERA_FRAMESIZE = "VGA"   # QVGA, VGA, SVGA, XGA, HD, SXGA, UXGA
CAMERA_QUALITY = 12        # 10 (best) .. 63
CHUNK_SIZE = 4000          # fchunk data bytes per publish
FRAME_QOS = 0              # 1 waits for a PUBACK per chunk: slower, lossless
FPS = 1.0

RUN_LIMIT = 0              # stop after this many readings/frames; 0 = forever (tests)
