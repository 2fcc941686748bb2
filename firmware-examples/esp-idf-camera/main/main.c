/* moonwire camera, ESP-IDF: frames from an OV2640 to cameras/<id>/frame as
 * fchunk v1 chunks over MQTT with mutual TLS (esp-mqtt).
 *
 * Memory: the JPEG stays in the camera's PSRAM frame buffer. Each chunk is
 * assembled once into a 4 KB scratch buffer (esp-mqtt takes one contiguous
 * payload) and, at QoS 1, copied once more into esp-mqtt's outbox until its
 * PUBACK. At most MW_QOS1_WINDOW chunks are unacknowledged, so the outbox
 * never holds more than window x chunk. Small frames can instead go whole at
 * QoS 0, streamed from the frame buffer. See README.md. */
#include <stdio.h>
#include <string.h>

#include "esp_camera.h"
#include "esp_event.h"
#include "esp_idf_version.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "esp_wifi.h"
#include "freertos/FreeRTOS.h"
#include "freertos/event_groups.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs_flash.h"

#include "fchunk.h"
#include "topics.h"

static const char *TAG = "mw-cam";

#define CHUNK_SIZE CONFIG_MW_CHUNK_SIZE
#define CHUNK_QOS CONFIG_MW_CHUNK_QOS
#define WINDOW CONFIG_MW_QOS1_WINDOW
#define ACK_TIMEOUT_MS 10000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000

#if defined(CONFIG_MW_FRAME_QVGA)
#define FRAME_SIZE FRAMESIZE_QVGA
#elif defined(CONFIG_MW_FRAME_SVGA)
#define FRAME_SIZE FRAMESIZE_SVGA
#elif defined(CONFIG_MW_FRAME_HD)
#define FRAME_SIZE FRAMESIZE_HD
#elif defined(CONFIG_MW_FRAME_UXGA)
#define FRAME_SIZE FRAMESIZE_UXGA
#else
#define FRAME_SIZE FRAMESIZE_VGA
#endif

extern const char ca_crt[] asm("_binary_ca_crt_start");
extern const char device_crt[] asm("_binary_device_crt_start");
extern const char device_key[] asm("_binary_device_key_start");

#define MQTT_UP BIT0
#define LINK_LOST BIT1

static EventGroupHandle_t net_events;
static esp_mqtt_client_handle_t mqtt;
static TaskHandle_t camera_task_handle;
static char frame_topic[MW_TOPIC_MAX];
static char avail_topic[MW_TOPIC_MAX];
static size_t chunk_packet_bytes; /* one full chunk as stored in the outbox */

/* ---- Wi-Fi: reconnect with exponential backoff ------------------------------ */

static esp_timer_handle_t wifi_retry_timer;
static uint32_t wifi_backoff_ms = BACKOFF_MIN_MS;

static void wifi_retry(void *arg)
{
    (void)arg;
    esp_wifi_connect();
}

static void wifi_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    (void)arg;
    (void)data;
    if (base == WIFI_EVENT && id == WIFI_EVENT_STA_START) {
        esp_wifi_connect();
    } else if (base == WIFI_EVENT && id == WIFI_EVENT_STA_DISCONNECTED) {
        ESP_LOGW(TAG, "wifi down, retry in %lu ms", (unsigned long)wifi_backoff_ms);
        esp_timer_start_once(wifi_retry_timer, (uint64_t)wifi_backoff_ms * 1000);
        wifi_backoff_ms = wifi_backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : wifi_backoff_ms * 2;
    } else if (base == IP_EVENT && id == IP_EVENT_STA_GOT_IP) {
        wifi_backoff_ms = BACKOFF_MIN_MS;
    }
}

static void wifi_start(void)
{
    const esp_timer_create_args_t t = {.callback = wifi_retry, .name = "wifi_retry"};
    wifi_config_t wc = {0};
    wifi_init_config_t init = WIFI_INIT_CONFIG_DEFAULT();

    ESP_ERROR_CHECK(esp_timer_create(&t, &wifi_retry_timer));
    ESP_ERROR_CHECK(esp_netif_init());
    esp_netif_create_default_wifi_sta();
    ESP_ERROR_CHECK(esp_wifi_init(&init));
    ESP_ERROR_CHECK(esp_event_handler_register(WIFI_EVENT, ESP_EVENT_ANY_ID, wifi_event, NULL));
    ESP_ERROR_CHECK(esp_event_handler_register(IP_EVENT, IP_EVENT_STA_GOT_IP, wifi_event, NULL));
    strlcpy((char *)wc.sta.ssid, CONFIG_MW_WIFI_SSID, sizeof wc.sta.ssid);
    strlcpy((char *)wc.sta.password, CONFIG_MW_WIFI_PASSWORD, sizeof wc.sta.password);
    ESP_ERROR_CHECK(esp_wifi_set_mode(WIFI_MODE_STA));
    ESP_ERROR_CHECK(esp_wifi_set_config(WIFI_IF_STA, &wc));
    ESP_ERROR_CHECK(esp_wifi_start());
    /* Power save adds 100+ ms to every chunk's round trip. */
    esp_wifi_set_ps(WIFI_PS_NONE);
}

/* ---- MQTT ----------------------------------------------------------------- */

static void mqtt_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    esp_mqtt_event_handle_t e = (esp_mqtt_event_handle_t)data;
    (void)arg;
    (void)base;
    switch ((esp_mqtt_event_id_t)id) {
    case MQTT_EVENT_CONNECTED:
        esp_mqtt_client_publish(mqtt, avail_topic, MW_ONLINE, 0, 1, 1);
        xEventGroupClearBits(net_events, LINK_LOST);
        xEventGroupSetBits(net_events, MQTT_UP);
        ESP_LOGI(TAG, "mqtt connected");
        break;
    case MQTT_EVENT_DISCONNECTED:
        xEventGroupClearBits(net_events, MQTT_UP);
        xEventGroupSetBits(net_events, LINK_LOST);
        xTaskNotifyGive(camera_task_handle);
        break;
    case MQTT_EVENT_PUBLISHED: /* a PUBACK: the outbox shrank */
    case MQTT_EVENT_DELETED:   /* an unacked message expired from the outbox */
        xTaskNotifyGive(camera_task_handle);
        break;
    case MQTT_EVENT_ERROR:
        if (e->error_handle->error_type == MQTT_ERROR_TYPE_CONNECTION_REFUSED) {
            ESP_LOGE(TAG, "broker refused: CONNACK %d", e->error_handle->connect_return_code);
        } else if (e->error_handle->error_type == MQTT_ERROR_TYPE_TCP_TRANSPORT) {
            ESP_LOGE(TAG, "transport error: tls 0x%x, socket errno %d",
                     e->error_handle->esp_tls_last_esp_err,
                     e->error_handle->esp_transport_sock_errno);
        }
        break;
    default:
        break;
    }
}

static void mqtt_init(void)
{
    /* Outbox entry of a full chunk: fixed header (<= 4) + topic + id + payload. */
    chunk_packet_bytes = 4 + 2 + strlen(frame_topic) + 2 + FCHUNK_HEADER_LEN + CHUNK_SIZE;

    esp_mqtt_client_config_t cfg = {
        .broker.address.uri = CONFIG_MW_BROKER_URI,
        .broker.verification.certificate = ca_crt,
        .credentials.client_id = CONFIG_MW_DEVICE_ID,
        .credentials.authentication.certificate = device_crt,
        .credentials.authentication.key = device_key,
        .session.last_will = {.topic = avail_topic, .msg = MW_OFFLINE, .qos = 1, .retain = 1},
        .session.keepalive = 30,
        /* esp-mqtt resends an unacked QoS 1 chunk on the same connection
         * after this; the broker ignores duplicate chunks. */
        .session.message_retransmit_timeout = 2000,
        .network.timeout_ms = 10000,
        /* We reconnect ourselves (camera_task) so the outbox can be emptied
         * first and the retry can back off exponentially. */
        .network.disable_auto_reconnect = true,
        .buffer.size = 1024,                                  /* what we receive: acks */
        .buffer.out_size = (int)chunk_packet_bytes + 16,      /* one chunk, never fragmented */
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 1, 0)
        /* Hard cap on top of the window: a bug here fails a publish, not the heap. */
        .outbox.limit = (uint64_t)(WINDOW + 1) * chunk_packet_bytes + 1024,
#endif
    };
    mqtt = esp_mqtt_client_init(&cfg);
    ESP_ERROR_CHECK(mqtt == NULL ? ESP_FAIL : ESP_OK);
    ESP_ERROR_CHECK(esp_mqtt_client_register_event(mqtt, ESP_EVENT_ANY_ID, mqtt_event, NULL));
    ESP_ERROR_CHECK(esp_mqtt_client_start(mqtt));
}

/* Blocks until fewer than WINDOW chunks are unacknowledged. esp-mqtt drops a
 * message from its outbox on PUBACK, so the outbox size is the in-flight
 * count, with no msg_id bookkeeping to race against the MQTT task. */
static bool window_wait(void)
{
    const int64_t limit = (int64_t)(WINDOW - 1) * (int64_t)chunk_packet_bytes;
    const TickType_t start = xTaskGetTickCount();
    while ((int64_t)esp_mqtt_client_get_outbox_size(mqtt) > limit) {
        if (!(xEventGroupGetBits(net_events) & MQTT_UP)) {
            return false;
        }
        if (xTaskGetTickCount() - start > pdMS_TO_TICKS(ACK_TIMEOUT_MS)) {
            ESP_LOGW(TAG, "no PUBACK for %d ms", ACK_TIMEOUT_MS);
            return false;
        }
        ulTaskNotifyTake(pdTRUE, pdMS_TO_TICKS(50));
    }
    return true;
}

static uint8_t scratch[FCHUNK_HEADER_LEN + CHUNK_SIZE];

static int publish_chunk(void *user, const char *topic, const uint8_t *header,
                         const uint8_t *data, size_t len)
{
    (void)user;
    if (CHUNK_QOS == 1 && !window_wait()) {
        return -1;
    }
    memcpy(scratch, header, FCHUNK_HEADER_LEN);
    memcpy(scratch + FCHUNK_HEADER_LEN, data, len);
    /* Returns the msg id (> 0 at QoS 1, 0 at QoS 0), -1 error, -2 outbox full. */
    return esp_mqtt_client_publish(mqtt, topic, (const char *)scratch,
                                   (int)(FCHUNK_HEADER_LEN + len), CHUNK_QOS, 0) < 0 ? -1 : 0;
}

/* ---- camera ----------------------------------------------------------------- */

static esp_err_t camera_init(void)
{
    /* AI-Thinker ESP32-CAM; see README for other boards. */
    camera_config_t c = {
        .pin_pwdn = 32, .pin_reset = -1, .pin_xclk = 0,
        .pin_sccb_sda = 26, .pin_sccb_scl = 27,
        .pin_d7 = 35, .pin_d6 = 34, .pin_d5 = 39, .pin_d4 = 36,
        .pin_d3 = 21, .pin_d2 = 19, .pin_d1 = 18, .pin_d0 = 5,
        .pin_vsync = 25, .pin_href = 23, .pin_pclk = 22,
        .xclk_freq_hz = 20000000,
        .ledc_timer = LEDC_TIMER_0,
        .ledc_channel = LEDC_CHANNEL_0,
        .pixel_format = PIXFORMAT_JPEG,
        .frame_size = FRAME_SIZE,
        .jpeg_quality = CONFIG_MW_JPEG_QUALITY,
        /* Two PSRAM buffers: the sensor fills one while we send the other,
         * and GRAB_LATEST hands us a fresh frame after a slow upload. */
        .fb_count = 2,
        .fb_location = CAMERA_FB_IN_PSRAM,
        .grab_mode = CAMERA_GRAB_LATEST,
    };
    return esp_camera_init(&c);
}

static void reconnect(uint32_t *backoff_ms)
{
    /* The broker dropped the old session and its partial frame with it.
     * Stopping the client empties esp-mqtt's outbox, so chunks of that
     * frame are not replayed into the new session. */
    esp_mqtt_client_stop(mqtt);
    uint32_t wait = *backoff_ms / 2 + esp_random() % (*backoff_ms / 2 + 1);
    ESP_LOGW(TAG, "mqtt down, reconnecting in %lu ms", (unsigned long)wait);
    vTaskDelay(pdMS_TO_TICKS(wait));
    *backoff_ms = *backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *backoff_ms * 2;
    xEventGroupClearBits(net_events, LINK_LOST);
    esp_mqtt_client_start(mqtt);
}

static void camera_task(void *arg)
{
    uint16_t frame_id = 0;
    uint32_t backoff_ms = BACKOFF_MIN_MS;
    TickType_t last = xTaskGetTickCount();
    (void)arg;

    for (;;) {
        EventBits_t bits = xEventGroupWaitBits(net_events, MQTT_UP | LINK_LOST, pdFALSE,
                                               pdFALSE, pdMS_TO_TICKS(30000));
        if (!(bits & MQTT_UP)) {
            reconnect(&backoff_ms); /* lost, or no answer for 30 s */
            continue;
        }
        backoff_ms = BACKOFF_MIN_MS;
        const TickType_t period = pdMS_TO_TICKS(CONFIG_MW_FRAME_INTERVAL_MS);
        if (xTaskGetTickCount() - last > period) {
            last = xTaskGetTickCount() - period; /* after an outage: no catch-up burst */
        }
        vTaskDelayUntil(&last, period);

        camera_fb_t *fb = esp_camera_fb_get();
        if (fb == NULL) {
            ESP_LOGW(TAG, "capture failed");
            continue;
        }
        if (CONFIG_MW_WHOLE_FRAME_MAX > 0 && fb->len <= CONFIG_MW_WHOLE_FRAME_MAX) {
            /* Whole JPEG, QoS 0: esp-mqtt streams it from the frame buffer
             * through its output buffer a piece at a time; no second copy of
             * the frame, nothing in the outbox. */
            if (esp_mqtt_client_publish(mqtt, frame_topic, (const char *)fb->buf, (int)fb->len,
                                        0, 0) < 0) {
                ESP_LOGW(TAG, "frame %u lost", frame_id);
            }
        } else {
            fchunk_frame_t f = {
                .topic = frame_topic,
                .data = fb->buf,
                .len = (uint32_t)fb->len,
                .frame_id = frame_id,
                .chunk_size = CHUNK_SIZE,
                .width = (uint16_t)fb->width,
                .height = (uint16_t)fb->height,
                .format = FCHUNK_FMT_JPEG,
            };
            fchunk_sender_t s;
            int rc = fchunk_sender_begin(&s, &f, publish_chunk, NULL);
            if (rc == FCHUNK_OK) {
                rc = fchunk_sender_run(&s);
            }
            if (rc != FCHUNK_OK) {
                ESP_LOGW(TAG, "frame %u lost at chunk %u/%u (rc %d)", frame_id,
                         fchunk_sender_sent(&s), fchunk_sender_total(&s), rc);
                if (rc == FCHUNK_ERR_PUBLISH) {
                    xEventGroupClearBits(net_events, MQTT_UP);
                    xEventGroupSetBits(net_events, LINK_LOST);
                }
            }
        }
        frame_id++;
        esp_camera_fb_return(fb);
    }
}

void app_main(void)
{
    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        ESP_ERROR_CHECK(nvs_flash_erase());
        err = nvs_flash_init();
    }
    ESP_ERROR_CHECK(err);
    ESP_ERROR_CHECK(esp_event_loop_create_default());

    if (mw_topic(frame_topic, sizeof frame_topic, MW_ROOT_CAMERAS, CONFIG_MW_DEVICE_ID,
                 MW_LEAF_FRAME) == 0 ||
        mw_topic(avail_topic, sizeof avail_topic, MW_ROOT_CAMERAS, CONFIG_MW_DEVICE_ID,
                 MW_LEAF_AVAILABILITY) == 0) {
        ESP_LOGE(TAG, "bad MW_DEVICE_ID '%s'", CONFIG_MW_DEVICE_ID);
        return;
    }
    err = camera_init();
    if (err != ESP_OK) {
        /* A camera that failed to probe rarely recovers without a reset. */
        ESP_LOGE(TAG, "camera init failed: %s; restarting", esp_err_to_name(err));
        vTaskDelay(pdMS_TO_TICKS(5000));
        esp_restart();
    }
    net_events = xEventGroupCreate();
    xTaskCreatePinnedToCore(camera_task, "camera", 6144, NULL, 5, &camera_task_handle, 1);
    wifi_start();
    mqtt_init();
}
