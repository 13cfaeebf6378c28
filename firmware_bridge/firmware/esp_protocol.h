/* edgeship serial protocol: framing (COBS), CRC-16/CCITT-FALSE and the message codec.
 *
 * Plain C99, no Arduino and no heap: the same file builds into the shelf-label sketch and into
 * the host unit tests (gcc -fsanitize=address,undefined) that check it against vectors.json.
 * Spec: docs/serial-protocol.md. All integers little-endian.
 *
 *   uint8_t wire[ESP_MAX_WIRE];
 *   esp_sale s = {1, 103520, 2000, 1502883000};
 *   uint8_t payload[ESP_MAX_PAYLOAD];
 *   size_t n = esp_frame_encode(ESP_SALE, seq, payload, esp_sale_encode(&s, payload), wire, sizeof wire);
 *   Serial.write(wire, n);
 */
#ifndef ESP_PROTOCOL_H
#define ESP_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ESP_VERSION 1
#define ESP_HEADER 8
#define ESP_MAX_PAYLOAD 240
#define ESP_MAX_BODY (ESP_HEADER + ESP_MAX_PAYLOAD + 2)
#define ESP_MAX_WIRE (ESP_MAX_BODY + ESP_MAX_BODY / 254 + 2)

enum esp_type {
  ESP_HELLO = 0x01, ESP_HEARTBEAT = 0x02, ESP_TIME_REQUEST = 0x03, ESP_TIME_SYNC = 0x04,
  ESP_SALE = 0x10, ESP_SENSOR = 0x11, ESP_PREDICT_REQUEST = 0x20, ESP_PREDICT_RESPONSE = 0x21,
  ESP_DISPLAY = 0x30, ESP_ACK = 0x40, ESP_NACK = 0x41
};

typedef enum {
  ESP_OK = 0, ESP_ERR_COBS, ESP_ERR_SHORT, ESP_ERR_LENGTH, ESP_ERR_CRC, ESP_ERR_VERSION,
  ESP_ERR_TYPE, ESP_ERR_PAYLOAD, ESP_ERR_OVERSIZE, ESP_ERR_SPACE, ESP_N_STATUS
} esp_status;

/* The names the Python side uses for each status (ERROR_REASONS), for the tests. */
const char *esp_status_name(esp_status s);

uint16_t esp_crc16(const uint8_t *data, size_t n);
/* Stuff n bytes into out (room for n + n/254 + 1); returns the encoded length (no delimiter). */
size_t esp_cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
/* Unstuff; ESP_ERR_COBS if malformed, ESP_ERR_SPACE if it would not fit in cap. */
esp_status esp_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *out_len);

typedef struct {
  uint8_t version, type;
  uint32_t seq;
  uint16_t length;
  const uint8_t *payload; /* points into the decoded body */
} esp_frame;

/* Whole wire frame (COBS + 0x00) into wire; returns its length, 0 if it does not fit. */
size_t esp_frame_encode(uint8_t type, uint32_t seq, const uint8_t *payload, size_t len, uint8_t *wire, size_t cap);
/* Check an unstuffed body: length, CRC, version, known type. */
esp_status esp_frame_check(const uint8_t *body, size_t n, esp_frame *f);

/* Byte-at-a-time receiver: bad frames are dropped and counted in errors[status]. */
typedef struct {
  uint8_t buf[ESP_MAX_WIRE];
  uint8_t body[ESP_MAX_BODY];
  size_t len;
  uint8_t skipping;
  uint32_t errors[ESP_N_STATUS];
  uint32_t frames;
} esp_rx;
void esp_rx_init(esp_rx *rx);
/* Returns 1 when b completed a good frame (in *f, valid until the next call). */
int esp_rx_byte(esp_rx *rx, uint8_t b, esp_frame *f);

/* -- messages: *_encode writes the payload (≤ ESP_MAX_PAYLOAD) and returns its length (0: a field
 *    does not fit); *_decode checks the payload's length and values. */
typedef struct { char device_id[33]; char firmware[17]; uint32_t boot_id; uint16_t capabilities; } esp_hello;
typedef struct { uint32_t value; } esp_u32msg; /* heartbeat/time request: uptime_ms; time sync: local_seconds; ack */
typedef struct { uint32_t store_nbr, item_nbr; int32_t quantity_milli; uint32_t time; } esp_sale;
typedef struct { uint8_t sensor_id, kind, unit; int8_t exponent; int32_t value; uint32_t time; } esp_sensor;
typedef struct { uint32_t store_nbr, item_nbr; uint16_t day; uint8_t onpromotion; } esp_predict_request;
typedef struct { uint32_t request_seq; uint8_t status; float value; uint32_t model_version; } esp_predict_response;
typedef struct { uint32_t item_nbr; char text[49]; } esp_display;
typedef struct { uint32_t nacked_seq; uint8_t reason; char detail[65]; } esp_nack;

size_t esp_hello_encode(const esp_hello *m, uint8_t *p);
esp_status esp_hello_decode(const uint8_t *p, size_t n, esp_hello *m);
size_t esp_u32msg_encode(const esp_u32msg *m, uint8_t *p);
esp_status esp_u32msg_decode(const uint8_t *p, size_t n, esp_u32msg *m);
size_t esp_sale_encode(const esp_sale *m, uint8_t *p);
esp_status esp_sale_decode(const uint8_t *p, size_t n, esp_sale *m);
size_t esp_sensor_encode(const esp_sensor *m, uint8_t *p);
esp_status esp_sensor_decode(const uint8_t *p, size_t n, esp_sensor *m);
size_t esp_predict_request_encode(const esp_predict_request *m, uint8_t *p);
esp_status esp_predict_request_decode(const uint8_t *p, size_t n, esp_predict_request *m);
size_t esp_predict_response_encode(const esp_predict_response *m, uint8_t *p);
esp_status esp_predict_response_decode(const uint8_t *p, size_t n, esp_predict_response *m);
size_t esp_display_encode(const esp_display *m, uint8_t *p);
esp_status esp_display_decode(const uint8_t *p, size_t n, esp_display *m);
size_t esp_nack_encode(const esp_nack *m, uint8_t *p);
esp_status esp_nack_decode(const uint8_t *p, size_t n, esp_nack *m);

#ifdef __cplusplus
}
#endif
#endif
