// Copy to secrets.h (git-ignored) and fill in.
#pragma once

#define WIFI_SSID "your-ssid"
#define WIFI_PASSWORD "your-password"

// Must match a name in the broker certificate (SAN), or TLS verification fails.
#define MQTT_HOST "moonwire.lan"
#define MQTT_PORT 8883
#define MQTT_USER "frontdoor"        // NULL for none
#define MQTT_PASSWORD "change-me"    // NULL for none

// Topic level: cameras/<CAMERA_ID>/..., also the MQTT client id.
#define CAMERA_ID "frontdoor"

// The broker's CA: contents of moonwire's certs/ca.crt.
static const char BROKER_CA_PEM[] = R"PEM(
-----BEGIN CERTIFICATE-----
...paste certs/ca.crt here...
-----END CERTIFICATE-----
)PEM";
