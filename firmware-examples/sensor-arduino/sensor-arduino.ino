// moonwire sensor node for ESP8266 or ESP32 (Arduino + PubSubClient).
//
// Every READING_INTERVAL_MS: home/<id>/sensors
//   {"temperature":21.5,"humidity":40.2,"motion":false,"ts":1700000000}
// On each PIR rising edge:   home/<id>/motion  {"motion":true,"ts":1700000000}
// Retained home/<id>/availability "online", last will "offline".
// JSON comes from the shared C core (src/moonwire), no printf/float formatting.

#if defined(ESP8266)
#include <ESP8266WiFi.h>
#else
#include <WiFi.h>
#endif
#include <WiFiClientSecure.h>
#include <DHT.h>
#include <PubSubClient.h>
#include <time.h>

#include "secrets.h"
#include "src/moonwire/sensor_json.h"
#include "src/moonwire/topics.h"

// ---- settings ---------------------------------------------------------------
static const uint32_t READING_INTERVAL_MS = 60000;
static const uint32_t MOTION_HOLDOFF_MS = 5000;  // PIRs retrigger; one event per 5 s
#if defined(ESP8266)
static const int DHT_PIN = 4;   // D2
static const int PIR_PIN = 14;  // D5
#else
static const int DHT_PIN = 4;
static const int PIR_PIN = 27;
#endif
static const uint32_t BACKOFF_MIN_MS = 1000;
static const uint32_t BACKOFF_MAX_MS = 60000;

static DHT dht(DHT_PIN, DHT22);

#if MQTT_USE_TLS
#if defined(ESP8266)
static BearSSL::WiFiClientSecure net;
static BearSSL::X509List trustAnchors(BROKER_CA_PEM);
#else
static WiFiClientSecure net;
#endif
#else
static WiFiClient net;
#endif
static PubSubClient mqtt(net);

static char sensorsTopic[MW_TOPIC_MAX];
static char motionTopic[MW_TOPIC_MAX];
static char availTopic[MW_TOPIC_MAX];

static volatile bool pirEdge = false;
static bool motionSinceReading = false;
static uint32_t lastMotionEventMs = 0;
static uint32_t lastReadingMs = 0;
static bool firstReading = true;
static uint32_t backoffMs = BACKOFF_MIN_MS;
static uint32_t nextAttemptMs = 0;

static void IRAM_ATTR onPir() { pirEdge = true; }

static uint32_t unixNow() {
  time_t t = time(nullptr);
  return t > 1600000000 ? (uint32_t)t : 0;  // 0: clock not set yet
}

static bool ensureConnected() {
  if (mqtt.connected()) return true;
  if ((int32_t)(millis() - nextAttemptMs) < 0) return false;
  bool ok = false;
  if (WiFi.status() == WL_CONNECTED && (!MQTT_USE_TLS || unixNow() != 0)) {
    // TLS checks the certificate dates, so it waits for NTP.
    ok = mqtt.connect(DEVICE_ID, MQTT_USER, MQTT_PASSWORD, availTopic, 1, true, MW_OFFLINE, true) &&
         mqtt.publish(availTopic, MW_ONLINE, true);
    Serial.printf("mqtt: %s (state %d)\n", ok ? "connected" : "failed", mqtt.state());
  }
  if (ok) {
    backoffMs = BACKOFF_MIN_MS;
    return true;
  }
  nextAttemptMs = millis() + backoffMs / 2 + (uint32_t)random(backoffMs / 2 + 1);
  backoffMs = backoffMs * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoffMs * 2;
  return false;
}

static void publishMotion() {
  if (!pirEdge) return;
  pirEdge = false;
  motionSinceReading = true;
  if (millis() - lastMotionEventMs < MOTION_HOLDOFF_MS && lastMotionEventMs != 0) return;
  char json[MOTION_JSON_MAX];
  if (unixNow() != 0 && motion_json_format(json, sizeof json, 1, unixNow()) > 0 &&
      mqtt.publish(motionTopic, json, false)) {
    lastMotionEventMs = millis();
  }
}

static void publishReading() {
  float t = dht.readTemperature();
  float h = dht.readHumidity();
  if (isnan(t) || isnan(h) || unixNow() == 0) {
    Serial.println("reading skipped (sensor or clock not ready)");
    return;
  }
  sensor_reading_t r;
  r.temperature_centi = (int32_t)lroundf(t * 100.0f);
  r.humidity_centi = (uint16_t)lroundf(h * 100.0f);
  r.motion = (motionSinceReading || digitalRead(PIR_PIN) == HIGH) ? 1 : 0;
  r.ts = unixNow();
  char json[SENSOR_JSON_MAX];
  if (sensor_json_format(json, sizeof json, &r) > 0 && mqtt.publish(sensorsTopic, json, false)) {
    motionSinceReading = false;
  }
}

void setup() {
  Serial.begin(115200);
  if (mw_topic(sensorsTopic, sizeof sensorsTopic, MW_ROOT_HOME, DEVICE_ID, MW_LEAF_SENSORS) == 0 ||
      mw_topic(motionTopic, sizeof motionTopic, MW_ROOT_HOME, DEVICE_ID, MW_LEAF_MOTION) == 0 ||
      mw_topic(availTopic, sizeof availTopic, MW_ROOT_HOME, DEVICE_ID, MW_LEAF_AVAILABILITY) == 0) {
    Serial.println("bad DEVICE_ID: 1-40 chars, no '/', '+', '#'");
    for (;;) delay(1000);
  }
  dht.begin();
  pinMode(PIR_PIN, INPUT);
  attachInterrupt(digitalPinToInterrupt(PIR_PIN), onPir, RISING);

  WiFi.mode(WIFI_STA);
  WiFi.setAutoReconnect(true);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  configTime(0, 0, "pool.ntp.org", "time.google.com");
#if MQTT_USE_TLS
#if defined(ESP8266)
  net.setTrustAnchors(&trustAnchors);
#else
  net.setCACert(BROKER_CA_PEM);
#endif
#endif
  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  mqtt.setBufferSize(256);  // readings are < 100 bytes
  mqtt.setKeepAlive(90);    // > READING_INTERVAL_MS, so loop() pings only when needed
}

void loop() {
  if (!ensureConnected()) {
    delay(50);
    return;
  }
  mqtt.loop();
  publishMotion();
  if (firstReading || millis() - lastReadingMs >= READING_INTERVAL_MS) {
    firstReading = false;
    lastReadingMs = millis();
    publishReading();
  }
  delay(10);
}
