// Copy to secrets.h (git-ignored) and fill in.
#pragma once

#define WIFI_SSID "your-ssid"
#define WIFI_PASSWORD "your-password"

#define MQTT_HOST "moonwire.lan"
#define MQTT_USE_TLS 1            // 0: plain TCP on 1883 (trusted LAN only)
#define MQTT_PORT 8883
#define MQTT_USER "hall"          // NULL for none
#define MQTT_PASSWORD "change-me" // NULL for none

// Topic level: home/<DEVICE_ID>/..., also the MQTT client id.
#define DEVICE_ID "hall"

// The broker's CA (moonwire certs/ca.crt), used when MQTT_USE_TLS is 1.
static const char BROKER_CA_PEM[] = R"PEM(
-----BEGIN CERTIFICATE-----
...paste certs/ca.crt here...
-----END CERTIFICATE-----
)PEM";
