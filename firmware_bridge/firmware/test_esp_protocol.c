/* Host unit test of esp_protocol.c against the golden vectors (vectors.json), run by
 * tests/unit/test_firmware_c.py with gcc -fsanitize=address,undefined:
 *
 *   gcc -std=c99 -Wall -Wextra -Werror -fsanitize=address,undefined esp_protocol.c test_esp_protocol.c -o t
 *   ./t vectors.json      # prints "ok N checks" and exits 0, or names each failing vector
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esp_protocol.h"

/* -- a tiny JSON reader, enough for vectors.json (no string escapes) ------------------------- */
typedef enum { J_NULL, J_NUM, J_STR, J_ARR, J_OBJ } jkind;
typedef struct jv {
  jkind kind;
  double num;
  char *str;     /* J_STR; key for object members */
  struct jv *kids; /* J_ARR/J_OBJ: children */
  size_t n;
  char *key;
} jv;

static const char *P;
static void ws(void) { while (*P == ' ' || *P == '\n' || *P == '\r' || *P == '\t') P++; }
static char *jstr(void) {
  const char *s = ++P;
  while (*P && *P != '"') P++;
  size_t n = (size_t)(P - s);
  char *out = malloc(n + 1);
  memcpy(out, s, n);
  out[n] = 0;
  P++;
  return out;
}
static void jparse(jv *v) {
  ws();
  memset(v, 0, sizeof *v);
  if (*P == '{' || *P == '[') {
    char close = *P == '{' ? '}' : ']';
    v->kind = *P == '{' ? J_OBJ : J_ARR;
    P++;
    ws();
    while (*P != close) {
      v->kids = realloc(v->kids, (v->n + 1) * sizeof(jv));
      char *key = NULL;
      if (v->kind == J_OBJ) {
        key = jstr();
        ws();
        P++; /* : */
      }
      jparse(&v->kids[v->n]);
      v->kids[v->n].key = key;
      v->n++;
      ws();
      if (*P == ',') P++;
      ws();
    }
    P++;
  } else if (*P == '"') {
    v->kind = J_STR;
    v->str = jstr();
  } else if (*P == 'n' || *P == 't' || *P == 'f') {
    v->kind = J_NUM;
    v->num = *P == 't';
    while (*P >= 'a' && *P <= 'z') P++;
  } else {
    char *end;
    v->kind = J_NUM;
    v->num = strtod(P, &end);
    P = end;
  }
}
static void jfree(jv *v) {
  for (size_t i = 0; i < v->n; i++) {
    jfree(&v->kids[i]);
    free(v->kids[i].key);
  }
  free(v->kids);
  free(v->str);
}
static const jv *get(const jv *o, const char *key) {
  for (size_t i = 0; i < o->n; i++)
    if (o->kids[i].key && strcmp(o->kids[i].key, key) == 0) return &o->kids[i];
  fprintf(stderr, "missing key %s\n", key);
  exit(2);
}
static long num(const jv *o, const char *key) { return (long)get(o, key)->num; }
static const char *str(const jv *o, const char *key) { return get(o, key)->str; }
static size_t unhex(const char *h, uint8_t *out) {
  size_t n = strlen(h) / 2;
  for (size_t i = 0; i < n; i++) {
    unsigned b;
    sscanf(h + 2 * i, "%2x", &b);
    out[i] = (uint8_t)b;
  }
  return n;
}

/* -- checks ------------------------------------------------------------------------------------ */
static int failures, checks;
#define CHECK(cond, ...)                         \
  do {                                           \
    checks++;                                    \
    if (!(cond)) {                               \
      failures++;                                \
      fprintf(stderr, "FAIL %s:%d ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);              \
      fprintf(stderr, "\n");                     \
    }                                            \
  } while (0)

static int same(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) { return na == nb && memcmp(a, b, na) == 0; }

/* Encode the message from the vector's fields; compare to its payload; decode the payload back. */
static void check_message(const char *name, int type, const jv *f, const uint8_t *want, size_t nwant) {
  uint8_t p[ESP_MAX_PAYLOAD];
  size_t n = 0;
  esp_status s = ESP_OK;
  switch (type) {
    case ESP_HELLO: {
      esp_hello m = {{0}, {0}, 0, 0}, back;
      strcpy(m.device_id, str(f, "device_id"));
      strcpy(m.firmware, str(f, "firmware"));
      m.boot_id = (uint32_t)num(f, "boot_id");
      m.capabilities = (uint16_t)num(f, "capabilities");
      n = esp_hello_encode(&m, p);
      s = esp_hello_decode(want, nwant, &back);
      CHECK(s == ESP_OK && !strcmp(back.device_id, m.device_id) && back.boot_id == m.boot_id, "%s decode", name);
      break;
    }
    case ESP_HEARTBEAT: case ESP_TIME_REQUEST: case ESP_TIME_SYNC: case ESP_ACK: {
      const char *k = type == ESP_TIME_SYNC ? "local_seconds" : type == ESP_ACK ? "acked_seq" : "uptime_ms";
      esp_u32msg m = {(uint32_t)num(f, k)}, back;
      n = esp_u32msg_encode(&m, p);
      s = esp_u32msg_decode(want, nwant, &back);
      CHECK(s == ESP_OK && back.value == m.value, "%s decode", name);
      break;
    }
    case ESP_SALE: {
      esp_sale m = {(uint32_t)num(f, "store_nbr"), (uint32_t)num(f, "item_nbr"), (int32_t)num(f, "quantity_milli"),
                    (uint32_t)num(f, "time")}, back;
      n = esp_sale_encode(&m, p);
      s = esp_sale_decode(want, nwant, &back);
      CHECK(s == ESP_OK && !memcmp(&back, &m, sizeof m), "%s decode", name);
      break;
    }
    case ESP_SENSOR: {
      esp_sensor m = {(uint8_t)num(f, "sensor_id"), (uint8_t)num(f, "kind"), (uint8_t)num(f, "unit"),
                      (int8_t)num(f, "exponent"), (int32_t)num(f, "value"), (uint32_t)num(f, "time")}, back;
      n = esp_sensor_encode(&m, p);
      s = esp_sensor_decode(want, nwant, &back);
      CHECK(s == ESP_OK && back.value == m.value && back.exponent == m.exponent, "%s decode", name);
      break;
    }
    case ESP_PREDICT_REQUEST: {
      esp_predict_request m = {(uint32_t)num(f, "store_nbr"), (uint32_t)num(f, "item_nbr"), (uint16_t)num(f, "day"),
                               (uint8_t)num(f, "onpromotion")}, back;
      n = esp_predict_request_encode(&m, p);
      s = esp_predict_request_decode(want, nwant, &back);
      CHECK(s == ESP_OK && back.item_nbr == m.item_nbr && back.day == m.day, "%s decode", name);
      break;
    }
    case ESP_PREDICT_RESPONSE: {
      esp_predict_response m = {(uint32_t)num(f, "request_seq"), (uint8_t)num(f, "status"),
                                (float)get(f, "value")->num, (uint32_t)num(f, "model_version")}, back;
      n = esp_predict_response_encode(&m, p);
      s = esp_predict_response_decode(want, nwant, &back);
      CHECK(s == ESP_OK && back.value == m.value && back.model_version == m.model_version, "%s decode", name);
      break;
    }
    case ESP_DISPLAY: {
      esp_display m = {(uint32_t)num(f, "item_nbr"), {0}}, back;
      strcpy(m.text, str(f, "text"));
      n = esp_display_encode(&m, p);
      s = esp_display_decode(want, nwant, &back);
      CHECK(s == ESP_OK && !strcmp(back.text, m.text), "%s decode", name);
      break;
    }
    case ESP_NACK: {
      esp_nack m = {(uint32_t)num(f, "nacked_seq"), (uint8_t)num(f, "reason"), {0}}, back;
      strcpy(m.detail, str(f, "detail"));
      n = esp_nack_encode(&m, p);
      s = esp_nack_decode(want, nwant, &back);
      CHECK(s == ESP_OK && !strcmp(back.detail, m.detail) && back.reason == m.reason, "%s decode", name);
      break;
    }
    default:
      CHECK(0, "%s: type %d has no codec", name, type);
  }
  CHECK(same(p, n, want, nwant), "%s: encoded payload differs", name);
}

static esp_status decode_wire(const uint8_t *wire, size_t n, esp_frame *f, esp_rx *rx) {
  uint32_t before[ESP_N_STATUS];
  memcpy(before, rx->errors, sizeof before);
  int got = 0;
  for (size_t i = 0; i < n; i++) got |= esp_rx_byte(rx, wire[i], f);
  if (got) return ESP_OK;
  for (int s = 1; s < ESP_N_STATUS; s++)
    if (rx->errors[s] != before[s]) return (esp_status)s;
  return ESP_N_STATUS;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s vectors.json\n", argv[0]);
    return 2;
  }
  FILE *fh = fopen(argv[1], "rb");
  if (!fh) {
    perror(argv[1]);
    return 2;
  }
  static char text[1 << 20];
  size_t len = fread(text, 1, sizeof text - 1, fh);
  fclose(fh);
  text[len] = 0;
  P = text;
  jv root;
  jparse(&root);

  static uint8_t a[4096], b[4096], c[4096];
  CHECK(num(&root, "protocol_version") == ESP_VERSION, "protocol version");
  CHECK(num(&root, "max_wire") == ESP_MAX_WIRE, "max_wire");
  const jv *crcs = get(&root, "crc16");
  for (size_t i = 0; i < crcs->n; i++) {
    size_t n = unhex(str(&crcs->kids[i], "input"), a);
    CHECK(esp_crc16(a, n) == num(&crcs->kids[i], "crc"), "crc16 vector %zu", i);
  }
  const jv *cobs = get(&root, "cobs");
  for (size_t i = 0; i < cobs->n; i++) {
    size_t nr = unhex(str(&cobs->kids[i], "raw"), a), ne = unhex(str(&cobs->kids[i], "encoded"), b), nd = 0;
    size_t w = esp_cobs_encode(a, nr, c);
    CHECK(same(c, w, b, ne), "cobs encode vector %zu", i);
    CHECK(esp_cobs_decode(b, ne, c, sizeof c, &nd) == ESP_OK && same(c, nd, a, nr), "cobs decode vector %zu", i);
  }
  esp_rx rx;
  esp_rx_init(&rx);
  const jv *frames = get(&root, "frames");
  for (size_t i = 0; i < frames->n; i++) {
    const jv *v = &frames->kids[i];
    const char *name = str(v, "name");
    size_t np = unhex(str(v, "payload"), a), nw = unhex(str(v, "wire"), b);
    size_t w = esp_frame_encode((uint8_t)num(v, "type"), (uint32_t)num(v, "seq"), a, np, c, sizeof c);
    CHECK(same(c, w, b, nw), "%s: wire differs", name);
    esp_frame f;
    esp_status s = decode_wire(b, nw, &f, &rx);
    CHECK(s == ESP_OK && f.type == num(v, "type") && f.seq == (uint32_t)num(v, "seq") && same(f.payload, f.length, a, np),
          "%s: decoded frame differs (%s)", name, esp_status_name(s));
    check_message(name, (int)num(v, "type"), get(v, "fields"), a, np);
  }
  const jv *bad = get(&root, "bad");
  for (size_t i = 0; i < bad->n; i++) {
    const jv *v = &bad->kids[i];
    size_t nw = unhex(str(v, "wire"), b);
    esp_frame f;
    esp_status s = decode_wire(b, nw, &f, &rx);
    if (s == ESP_OK && f.type == ESP_ACK) { /* the frame is sound; its payload is not */
      esp_u32msg m;
      s = esp_u32msg_decode(f.payload, f.length, &m);
    }
    CHECK(!strcmp(esp_status_name(s), str(v, "reason")), "%s: got %s, want %s", str(v, "name"), esp_status_name(s),
          str(v, "reason"));
  }
  /* a babbling device: 1000 non-zero bytes are dropped as oversize, and the next frame still decodes */
  memset(a, 0x55, 1000);
  esp_frame f;
  esp_status s = decode_wire(a, 1000, &f, &rx);
  CHECK(s == ESP_ERR_OVERSIZE, "oversize: got %s", esp_status_name(s));
  size_t nw = unhex(str(&frames->kids[0], "wire"), b);
  s = decode_wire((const uint8_t *)"\0", 1, &f, &rx);
  s = decode_wire(b, nw, &f, &rx);
  CHECK(s == ESP_OK && f.type == ESP_HELLO, "frame after oversize: %s", esp_status_name(s));
  /* every truncation of every good frame is dropped, never read out of bounds (ASan watches) */
  for (size_t i = 0; i < frames->n; i++) {
    size_t n = unhex(str(&frames->kids[i], "wire"), b);
    for (size_t cut = 1; cut + 1 < n; cut++) {
      memcpy(c, b, cut);
      c[cut] = 0;
      s = decode_wire(c, cut + 1, &f, &rx);
      CHECK(s != ESP_OK, "truncated %s at %zu decoded", str(&frames->kids[i], "name"), cut);
    }
  }
  jfree(&root);
  if (failures) {
    fprintf(stderr, "%d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("ok %d checks\n", checks);
  return 0;
}
