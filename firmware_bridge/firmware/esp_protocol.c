/* edgeship serial protocol core; see esp_protocol.h and docs/serial-protocol.md. */
#include "esp_protocol.h"

#include <string.h>

static const char *const NAMES[ESP_N_STATUS] = {"ok", "cobs", "short", "length", "crc", "version",
                                                 "type", "payload", "oversize", "space"};

const char *esp_status_name(esp_status s) { return (unsigned)s < ESP_N_STATUS ? NAMES[s] : "?"; }

uint16_t esp_crc16(const uint8_t *data, size_t n) {
  uint16_t crc = 0xFFFF;
  for (size_t i = 0; i < n; i++) {
    crc ^= (uint16_t)data[i] << 8;
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
  }
  return crc;
}

size_t esp_cobs_encode(const uint8_t *in, size_t n, uint8_t *out) {
  size_t code_at = 0, o = 1;
  uint8_t code = 1;
  for (size_t i = 0; i < n; i++) {
    if (in[i] == 0) {
      out[code_at] = code;
      code_at = o++;
      code = 1;
    } else {
      out[o++] = in[i];
      if (++code == 0xFF) {
        out[code_at] = code;
        code_at = o++;
        code = 1;
      }
    }
  }
  out[code_at] = code;
  return o;
}

esp_status esp_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t cap, size_t *out_len) {
  size_t i = 0, o = 0;
  while (i < n) {
    uint8_t code = in[i];
    if (code == 0 || i + code > n) return ESP_ERR_COBS;
    for (size_t k = i + 1; k < i + code; k++) {
      if (in[k] == 0) return ESP_ERR_COBS;
      if (o >= cap) return ESP_ERR_SPACE;
      out[o++] = in[k];
    }
    i += code;
    if (code < 0xFF && i < n) {
      if (o >= cap) return ESP_ERR_SPACE;
      out[o++] = 0;
    }
  }
  *out_len = o;
  return ESP_OK;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k)); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

size_t esp_frame_encode(uint8_t type, uint32_t seq, const uint8_t *payload, size_t len, uint8_t *wire, size_t cap) {
  uint8_t body[ESP_MAX_BODY];
  if (len > ESP_MAX_PAYLOAD) return 0;
  body[0] = ESP_VERSION;
  body[1] = type;
  put32(body + 2, seq);
  put16(body + 6, (uint16_t)len);
  if (len) memcpy(body + ESP_HEADER, payload, len);
  put16(body + ESP_HEADER + len, esp_crc16(body, ESP_HEADER + len));
  size_t n = ESP_HEADER + len + 2;
  if (cap < n + n / 254 + 2) return 0;
  size_t w = esp_cobs_encode(body, n, wire);
  wire[w++] = 0;
  return w;
}

static int known_type(uint8_t t) {
  switch (t) {
    case ESP_HELLO: case ESP_HEARTBEAT: case ESP_TIME_REQUEST: case ESP_TIME_SYNC: case ESP_SALE: case ESP_SENSOR:
    case ESP_PREDICT_REQUEST: case ESP_PREDICT_RESPONSE: case ESP_DISPLAY: case ESP_ACK: case ESP_NACK:
      return 1;
    default:
      return 0;
  }
}

esp_status esp_frame_check(const uint8_t *body, size_t n, esp_frame *f) {
  if (n < ESP_HEADER + 2) return ESP_ERR_SHORT;
  f->version = body[0];
  f->type = body[1];
  f->seq = get32(body + 2);
  f->length = get16(body + 6);
  f->payload = body + ESP_HEADER;
  if (n != (size_t)ESP_HEADER + f->length + 2) return ESP_ERR_LENGTH;
  if (esp_crc16(body, n - 2) != get16(body + n - 2)) return ESP_ERR_CRC;
  if (f->version != ESP_VERSION) return ESP_ERR_VERSION;
  if (!known_type(f->type)) return ESP_ERR_TYPE;
  return ESP_OK;
}

void esp_rx_init(esp_rx *rx) { memset(rx, 0, sizeof *rx); }

int esp_rx_byte(esp_rx *rx, uint8_t b, esp_frame *f) {
  if (b != 0) {
    if (rx->skipping) return 0;
    if (rx->len >= sizeof rx->buf) {
      rx->len = 0;
      rx->skipping = 1;
      rx->errors[ESP_ERR_OVERSIZE]++;
      return 0;
    }
    rx->buf[rx->len++] = b;
    return 0;
  }
  if (rx->skipping || rx->len == 0) {
    rx->skipping = 0;
    rx->len = 0;
    return 0;
  }
  size_t n = 0;
  esp_status s = esp_cobs_decode(rx->buf, rx->len, rx->body, sizeof rx->body, &n);
  rx->len = 0;
  if (s == ESP_ERR_SPACE) s = ESP_ERR_OVERSIZE;
  if (s == ESP_OK) s = esp_frame_check(rx->body, n, f);
  if (s != ESP_OK) {
    rx->errors[s]++;
    return 0;
  }
  rx->frames++;
  return 1;
}

/* -- messages -------------------------------------------------------------------------------- */
static size_t put_str(uint8_t *p, const char *s, size_t limit) {
  size_t n = strlen(s);
  if (n > limit) return 0;
  p[0] = (uint8_t)n;
  memcpy(p + 1, s, n);
  return n + 1;
}

/* Reads a length-prefixed string at *at into out (room for limit + 1). */
static esp_status get_str(const uint8_t *p, size_t n, size_t *at, char *out, size_t limit) {
  if (*at >= n) return ESP_ERR_PAYLOAD;
  size_t len = p[*at];
  if (len > limit || *at + 1 + len > n) return ESP_ERR_PAYLOAD;
  memcpy(out, p + *at + 1, len);
  out[len] = '\0';
  if (memchr(out, 0, len)) return ESP_ERR_PAYLOAD;
  *at += 1 + len;
  return ESP_OK;
}

size_t esp_hello_encode(const esp_hello *m, uint8_t *p) {
  size_t a = put_str(p, m->device_id, 32);
  if (a <= 1) return 0;
  size_t b = put_str(p + a, m->firmware, 16);
  if (!b) return 0;
  put32(p + a + b, m->boot_id);
  put16(p + a + b + 4, m->capabilities);
  return a + b + 6;
}

esp_status esp_hello_decode(const uint8_t *p, size_t n, esp_hello *m) {
  size_t at = 0;
  if (get_str(p, n, &at, m->device_id, 32) || get_str(p, n, &at, m->firmware, 16)) return ESP_ERR_PAYLOAD;
  if (n - at != 6 || m->device_id[0] == '\0') return ESP_ERR_PAYLOAD;
  m->boot_id = get32(p + at);
  m->capabilities = get16(p + at + 4);
  return ESP_OK;
}

size_t esp_u32msg_encode(const esp_u32msg *m, uint8_t *p) { put32(p, m->value); return 4; }

esp_status esp_u32msg_decode(const uint8_t *p, size_t n, esp_u32msg *m) {
  if (n != 4) return ESP_ERR_PAYLOAD;
  m->value = get32(p);
  return ESP_OK;
}

size_t esp_sale_encode(const esp_sale *m, uint8_t *p) {
  put32(p, m->store_nbr);
  put32(p + 4, m->item_nbr);
  put32(p + 8, (uint32_t)m->quantity_milli);
  put32(p + 12, m->time);
  return 16;
}

esp_status esp_sale_decode(const uint8_t *p, size_t n, esp_sale *m) {
  if (n != 16) return ESP_ERR_PAYLOAD;
  m->store_nbr = get32(p);
  m->item_nbr = get32(p + 4);
  m->quantity_milli = (int32_t)get32(p + 8);
  m->time = get32(p + 12);
  return ESP_OK;
}

size_t esp_sensor_encode(const esp_sensor *m, uint8_t *p) {
  p[0] = m->sensor_id;
  p[1] = m->kind;
  p[2] = m->unit;
  p[3] = (uint8_t)m->exponent;
  put32(p + 4, (uint32_t)m->value);
  put32(p + 8, m->time);
  return 12;
}

esp_status esp_sensor_decode(const uint8_t *p, size_t n, esp_sensor *m) {
  if (n != 12) return ESP_ERR_PAYLOAD;
  m->sensor_id = p[0];
  m->kind = p[1];
  m->unit = p[2];
  m->exponent = (int8_t)p[3];
  m->value = (int32_t)get32(p + 4);
  m->time = get32(p + 8);
  if (m->kind < 1 || m->kind > 5 || m->unit < 1 || m->unit > 5) return ESP_ERR_PAYLOAD;
  return ESP_OK;
}

size_t esp_predict_request_encode(const esp_predict_request *m, uint8_t *p) {
  put32(p, m->store_nbr);
  put32(p + 4, m->item_nbr);
  put16(p + 8, m->day);
  p[10] = m->onpromotion;
  return 11;
}

esp_status esp_predict_request_decode(const uint8_t *p, size_t n, esp_predict_request *m) {
  if (n != 11) return ESP_ERR_PAYLOAD;
  m->store_nbr = get32(p);
  m->item_nbr = get32(p + 4);
  m->day = get16(p + 8);
  m->onpromotion = p[10];
  return ESP_OK;
}

size_t esp_predict_response_encode(const esp_predict_response *m, uint8_t *p) {
  uint32_t bits;
  memcpy(&bits, &m->value, 4); /* IEEE-754 single on every target we build for */
  put32(p, m->request_seq);
  p[4] = m->status;
  put32(p + 5, bits);
  put32(p + 9, m->model_version);
  return 13;
}

esp_status esp_predict_response_decode(const uint8_t *p, size_t n, esp_predict_response *m) {
  if (n != 13) return ESP_ERR_PAYLOAD;
  uint32_t bits = get32(p + 5);
  m->request_seq = get32(p);
  m->status = p[4];
  memcpy(&m->value, &bits, 4);
  m->model_version = get32(p + 9);
  return ESP_OK;
}

size_t esp_display_encode(const esp_display *m, uint8_t *p) {
  put32(p, m->item_nbr);
  size_t s = put_str(p + 4, m->text, 48);
  return s ? 4 + s : 0;
}

esp_status esp_display_decode(const uint8_t *p, size_t n, esp_display *m) {
  size_t at = 4;
  if (n < 5) return ESP_ERR_PAYLOAD;
  m->item_nbr = get32(p);
  if (get_str(p, n, &at, m->text, 48) || at != n) return ESP_ERR_PAYLOAD;
  return ESP_OK;
}

size_t esp_nack_encode(const esp_nack *m, uint8_t *p) {
  put32(p, m->nacked_seq);
  p[4] = m->reason;
  size_t s = put_str(p + 5, m->detail, 64);
  return s ? 5 + s : 0;
}

esp_status esp_nack_decode(const uint8_t *p, size_t n, esp_nack *m) {
  size_t at = 5;
  if (n < 6) return ESP_ERR_PAYLOAD;
  m->nacked_seq = get32(p);
  m->reason = p[4];
  if (get_str(p, n, &at, m->detail, 64) || at != n) return ESP_ERR_PAYLOAD;
  return ESP_OK;
}
