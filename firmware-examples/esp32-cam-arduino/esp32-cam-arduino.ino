// moonwire camera for the AI-Thinker ESP32-CAM (OV2640), Arduino + PubSubClient.
//
// Streams JPEG frames to cameras/<id>/frame as fchunk v1 chunks straight from
// the camera's frame buffer (no copy), over TLS with the broker's CA. Keeps
// cameras/<id>/availability retained "online", with "offline" as last will.
// A PIR (or any trigger) on GPIO 13 publishes home/<id>/motion and raises the
// frame rate for a while. See README.md for board settings and wiring.

#include <PubSubClient.h>
#include <WiFi.h>
#include <WiFiClientSecure.h>
#include <time.h>

#include "esp_camera.h"
#include "secrets.h"
#include "src/moonwire/fchunk.h"
#include "src/moonwire/sensor_json.h"
#include "src/moonwire/topics.h"

// ---- settings ---------------------------------------------------------------
static const framesize_t FRAME_SIZE = FRAMESIZE_VGA;  // QVGA .. UXGA
static const int JPEG_QUALITY = 12;                   // 10 (best, largest) .. 63
static const uint16_t CHUNK_SIZE = 4000;              // fchunk data per publish
static const uint32_t IDLE_FRAME_MS = 10000;          // one frame / 10 s when quiet
static const uint32_t MOTION_FRAME_MS = 500;          // 2 fps after a trigger...
static const uint32_t MOTION_HOLD_MS = 15000;         // ...for this long
static const int TRIGGER_PIN = 13;                    // PIR output, active high
static const uint16_t MQTT_BUFFER_SIZE = 4096;        // CONNECT etc.; frames bypass it
static const uint16_t MQTT_KEEPALIVE_S = 30;
static const uint32_t BACKOFF_MIN_MS = 1000;
static const uint32_t BACKOFF_MAX_MS = 60000;

// ---- AI-Thinker ESP32-CAM wiring ---------------------------------------------
#define PWDN_GPIO_NUM 32
#define RESET_GPIO_NUM -1
#define XCLK_GPIO_NUM 0
#define SIOD_GPIO_NUM 26
#define SIOC_GPIO_NUM 27
#define Y9_GPIO_NUM 35
#define Y8_GPIO_NUM 34
#define Y7_GPIO_NUM 39
#define Y6_GPIO_NUM 36
#define Y5_GPIO_NUM 21
#define Y4_GPIO_NUM 19
#define Y3_GPIO_NUM 18
#define Y2_GPIO_NUM 5
#define VSYNC_GPIO_NUM 25
#define HREF_GPIO_NUM 23
#define PCLK_GPIO_NUM 22

static WiFiClientSecure net;
static PubSubClient mqtt(net);

static char frameTopic[MW_TOPIC_MAX];
static char availTopic[MW_TOPIC_MAX];
static char motionTopic[MW_TOPIC_MAX];

static uint16_t frameId = 0;
static uint32_t lastFrameMs = 0;
static uint32_t motionUntilMs = 0;
static uint32_t backoffMs = BACKOFF_MIN_MS;
static uint32_t nextAttemptMs = 0;
static volatile bool triggered = false;

static void IRAM_ATTR onTrigger() {
  triggered = true;  // ISR: set a flag, do the work in loop()
}

static bool initCamera() {
  camera_config_t c = {};
  c.pin_pwdn = PWDN_GPIO_NUM;
  c.pin_reset = RESET_GPIO_NUM;
  c.pin_xclk = XCLK_GPIO_NUM;
  c.pin_sccb_sda = SIOD_GPIO_NUM;
  c.pin_sccb_scl = SIOC_GPIO_NUM;
  c.pin_d7 = Y9_GPIO_NUM;
  c.pin_d6 = Y8_GPIO_NUM;
  c.pin_d5 = Y7_GPIO_NUM;
  c.pin_d4 = Y6_GPIO_NUM;
  c.pin_d3 = Y5_GPIO_NUM;
  c.pin_d2 = Y4_GPIO_NUM;
  c.pin_d1 = Y3_GPIO_NUM;
  c.pin_d0 = Y2_GPIO_NUM;
  c.pin_vsync = VSYNC_GPIO_NUM;
  c.pin_href = HREF_GPIO_NUM;
  c.pin_pclk = PCLK_GPIO_NUM;
  c.xclk_freq_hz = 20000000;
  c.ledc_timer = LEDC_TIMER_0;
  c.ledc_channel = LEDC_CHANNEL_0;
  c.pixel_format = PIXFORMAT_JPEG;
  c.frame_size = FRAME_SIZE;
  c.jpeg_quality = JPEG_QUALITY;
  // Two buffers in PSRAM: the sensor fills one while we send the other.
  // GRAB_LATEST: after a slow upload we send a fresh frame, not a stale one.
  c.fb_count = psramFound() ? 2 : 1;
  c.fb_location = psramFound() ? CAMERA_FB_IN_PSRAM : CAMERA_FB_IN_DRAM;
  c.grab_mode = psramFound() ? CAMERA_GRAB_LATEST : CAMERA_GRAB_WHEN_EMPTY;
  if (!psramFound() && FRAME_SIZE > FRAMESIZE_SVGA) {
    Serial.println("no PSRAM: frames above SVGA will not fit, using SVGA");
    c.frame_size = FRAMESIZE_SVGA;
  }
  esp_err_t err = esp_camera_init(&c);
  if (err != ESP_OK) {
    Serial.printf("camera init failed: 0x%x\n", err);
    return false;
  }
  return true;
}

// fchunk publish callback: one MQTT PUBLISH per chunk, written in pieces so
// neither the header nor the frame data passes through PubSubClient's buffer.
static int publishChunk(void *user, const char *topic, const uint8_t *header,
                        const uint8_t *data, size_t len) {
  PubSubClient *m = static_cast<PubSubClient *>(user);
  if (!m->beginPublish(topic, FCHUNK_HEADER_LEN + len, false)) return -1;
  if (m->write(header, FCHUNK_HEADER_LEN) != FCHUNK_HEADER_LEN) return -1;
  if (m->write(data, len) != len) return -1;
  return m->endPublish() ? 0 : -1;
}

static void sendFrame() {
  camera_fb_t *fb = esp_camera_fb_get();
  if (fb == nullptr) {
    Serial.println("capture failed");
    return;
  }
  fchunk_frame_t f = {};
  f.topic = frameTopic;
  f.data = fb->buf;
  f.len = fb->len;
  f.frame_id = frameId++;
  f.chunk_size = CHUNK_SIZE;
  f.width = fb->width;
  f.height = fb->height;
  f.format = FCHUNK_FMT_JPEG;

  fchunk_sender_t s;
  int rc = fchunk_sender_begin(&s, &f, publishChunk, &mqtt);
  if (rc != FCHUNK_OK) {  // e.g. an empty capture: nothing to send
    Serial.printf("frame skipped: fchunk rc %d, %u bytes\n", rc, (unsigned)fb->len);
    esp_camera_fb_return(fb);
    return;
  }
  do {
    rc = fchunk_sender_step(&s);
    // Between chunks: answer the broker (PINGRESP) and let Wi-Fi run.
    if (rc == FCHUNK_MORE && !mqtt.loop()) rc = FCHUNK_ERR_PUBLISH;
  } while (rc == FCHUNK_MORE);
  if (rc != FCHUNK_OK) {
    // The broker drops the partial frame when the session ends; the next
    // frame starts fresh after the reconnect.
    Serial.printf("frame %u lost at chunk %u/%u\n", f.frame_id, fchunk_sender_sent(&s),
                  fchunk_sender_total(&s));
    mqtt.disconnect();
  }
  esp_camera_fb_return(fb);
}

static bool clockIsSet() { return time(nullptr) > 1600000000; }

// Non-blocking connection upkeep with exponential backoff. Returns true when
// MQTT is connected.
static bool ensureConnected() {
  if (mqtt.connected()) return true;
  if ((int32_t)(millis() - nextAttemptMs) < 0) return false;

  bool ok = false;
  if (WiFi.status() != WL_CONNECTED) {
    WiFi.reconnect();
    Serial.println("wifi: reconnecting");
  } else if (!clockIsSet()) {
    // TLS needs the date to check the broker certificate's validity.
    Serial.println("waiting for NTP");
  } else {
    ok = mqtt.connect(CAMERA_ID, MQTT_USER, MQTT_PASSWORD, availTopic,
                      1, true, MW_OFFLINE, true);
    if (ok) {
      ok = mqtt.publish(availTopic, MW_ONLINE, true);
    }
    Serial.printf("mqtt: %s (state %d)\n", ok ? "connected" : "connect failed", mqtt.state());
  }
  if (ok) {
    backoffMs = BACKOFF_MIN_MS;
    return true;
  }
  // Jitter so a house full of devices does not reconnect in lockstep.
  nextAttemptMs = millis() + backoffMs / 2 + esp_random() % (backoffMs / 2 + 1);
  backoffMs = backoffMs * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoffMs * 2;
  return false;
}

static void handleTrigger() {
  if (!triggered) return;
  triggered = false;
  bool wasIdle = (int32_t)(millis() - motionUntilMs) >= 0;
  motionUntilMs = millis() + MOTION_HOLD_MS;
  if (wasIdle) {
    char json[MOTION_JSON_MAX];
    if (motion_json_format(json, sizeof json, 1, (uint32_t)time(nullptr)) > 0) {
      mqtt.publish(motionTopic, json, false);
    }
    lastFrameMs = millis() - MOTION_FRAME_MS;  // first frame right away
  }
}

void setup() {
  Serial.begin(115200);
  pinMode(4, OUTPUT);  // the flash LED: keep it off
  digitalWrite(4, LOW);

  if (mw_topic(frameTopic, sizeof frameTopic, MW_ROOT_CAMERAS, CAMERA_ID, MW_LEAF_FRAME) == 0 ||
      mw_topic(availTopic, sizeof availTopic, MW_ROOT_CAMERAS, CAMERA_ID, MW_LEAF_AVAILABILITY) == 0 ||
      mw_topic(motionTopic, sizeof motionTopic, MW_ROOT_HOME, CAMERA_ID, MW_LEAF_MOTION) == 0) {
    Serial.println("bad CAMERA_ID: 1-40 chars, no '/', '+', '#'");
    for (;;) delay(1000);
  }
  if (!initCamera()) {
    delay(5000);
    ESP.restart();  // a camera that failed to init rarely recovers otherwise
  }

  pinMode(TRIGGER_PIN, INPUT_PULLDOWN);
  attachInterrupt(digitalPinToInterrupt(TRIGGER_PIN), onTrigger, RISING);

  WiFi.mode(WIFI_STA);
  WiFi.setSleep(false);  // modem sleep adds 100+ ms latency per chunk
  WiFi.setAutoReconnect(true);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  configTime(0, 0, "pool.ntp.org", "time.google.com");

  net.setCACert(BROKER_CA_PEM);
  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  mqtt.setBufferSize(MQTT_BUFFER_SIZE);
  mqtt.setKeepAlive(MQTT_KEEPALIVE_S);
  mqtt.setSocketTimeout(10);
}

void loop() {
  if (!ensureConnected()) {
    delay(50);
    return;
  }
  mqtt.loop();
  handleTrigger();
  bool motion = (int32_t)(millis() - motionUntilMs) < 0;
  uint32_t interval = motion ? MOTION_FRAME_MS : IDLE_FRAME_MS;
  if (millis() - lastFrameMs >= interval) {
    lastFrameMs = millis();
    sendFrame();
  }
  delay(1);
}
