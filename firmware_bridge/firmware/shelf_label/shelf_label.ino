// edgeship reference firmware: a shelf-label node (Arduino-compatible, e.g. an Uno or an ESP32).
//
// A button press records a sale of this shelf's item; the node asks the bridge for the forecast of
// tomorrow and shows it. Sales wait in a small ring until acked (the bridge acks only after the edge
// agent accepted them) and are re-sent with the same sequence number, so none is lost or counted
// twice. All framing, CRC and codec work is in esp_protocol.c (host-tested against vectors.json);
// this file is only the glue to the board. Copy or symlink ../esp_protocol.{c,h} next to it to build
// with the Arduino IDE or arduino-cli.
#include "esp_protocol.h"

static const char DEVICE_ID[] = "shelf-7";
static const uint32_t STORE = 1, ITEM = 103520;
static const int BUTTON_PIN = 2;
static const uint32_t RETRY_MS = 2000, HEARTBEAT_MS = 5000, PREDICT_MS = 30000;

struct Pending { uint32_t seq; esp_sale sale; uint32_t sent_ms; bool used; };
static Pending ring[8];
static esp_rx rx;
static uint32_t next_seq = 1, boot_id, clock_base_s, clock_base_ms, last_beat, last_predict;
static float forecast = -1;

static void send(uint8_t type, const uint8_t *payload, size_t len, uint32_t seq) {
  uint8_t wire[ESP_MAX_WIRE];
  size_t n = esp_frame_encode(type, seq, payload, len, wire, sizeof wire);
  Serial.write(wire, n);
}

static uint32_t now_local() { return clock_base_s ? clock_base_s + (millis() - clock_base_ms) / 1000 : 0; }

static void send_hello() {
  esp_hello h = {};
  strncpy(h.device_id, DEVICE_ID, 32);
  strncpy(h.firmware, "1.0.0", 16);
  h.boot_id = boot_id;
  h.capabilities = 0x0F;
  uint8_t p[ESP_MAX_PAYLOAD];
  send(ESP_HELLO, p, esp_hello_encode(&h, p), next_seq++);
  esp_u32msg t = {(uint32_t)millis()};
  send(ESP_TIME_REQUEST, p, esp_u32msg_encode(&t, p), next_seq++);
}

static void record_sale(int32_t milli) {
  for (Pending &p : ring) {
    if (!p.used) {
      p = {next_seq++, {STORE, ITEM, milli, now_local()}, 0, true};
      return;
    }
  }  // ring full: the button press is not taken (the label blinks in a real build)
}

static void on_frame(const esp_frame &f) {
  switch (f.type) {
    case ESP_HELLO:  // the bridge (re)started and does not know us yet: introduce ourselves (and resync)
      send_hello();
      break;
    case ESP_TIME_SYNC: {
      esp_u32msg t;
      if (esp_u32msg_decode(f.payload, f.length, &t) == ESP_OK) { clock_base_s = t.value; clock_base_ms = millis(); }
      break;
    }
    case ESP_ACK: {
      esp_u32msg a;
      if (esp_u32msg_decode(f.payload, f.length, &a) != ESP_OK) break;
      for (Pending &p : ring) if (p.used && p.seq == a.value) p.used = false;
      break;
    }
    case ESP_NACK: {
      esp_nack n;
      if (esp_nack_decode(f.payload, f.length, &n) != ESP_OK) break;
      if (n.reason == 1) for (Pending &p : ring) if (p.used && p.seq == n.nacked_seq) p.used = false;  // refused: drop
      break;  // unavailable: keep, re-sent after RETRY_MS with the same seq
    }
    case ESP_PREDICT_RESPONSE: {
      esp_predict_response r;
      if (esp_predict_response_decode(f.payload, f.length, &r) == ESP_OK && r.status == 0) forecast = r.value;
      break;
    }
    case ESP_DISPLAY: {
      esp_display d;
      if (esp_display_decode(f.payload, f.length, &d) == ESP_OK && d.item_nbr == ITEM) { /* draw d.text on the label */ }
      break;
    }
    default:
      break;
  }
}

void setup() {
  Serial.begin(115200);
  pinMode(BUTTON_PIN, INPUT_PULLUP);
  randomSeed(analogRead(0));
  boot_id = ((uint32_t)random(0x10000) << 16) | (uint32_t)random(0x10000);
  esp_rx_init(&rx);
  send_hello();
}

void loop() {
  esp_frame f;
  while (Serial.available()) if (esp_rx_byte(&rx, (uint8_t)Serial.read(), &f)) on_frame(f);
  static int last_button = HIGH;
  int b = digitalRead(BUTTON_PIN);
  if (b == LOW && last_button == HIGH && clock_base_s) record_sale(1000);
  last_button = b;
  uint32_t now = millis();
  uint8_t p[ESP_MAX_PAYLOAD];
  for (Pending &s : ring) {
    if (s.used && (s.sent_ms == 0 || now - s.sent_ms > RETRY_MS)) {
      send(ESP_SALE, p, esp_sale_encode(&s.sale, p), s.seq);  // the same seq on every retry
      s.sent_ms = now;
    }
  }
  if (now - last_beat > HEARTBEAT_MS) {
    esp_u32msg h = {now};
    send(ESP_HEARTBEAT, p, esp_u32msg_encode(&h, p), next_seq++);
    last_beat = now;
  }
  if (clock_base_s && now - last_predict > PREDICT_MS) {
    esp_predict_request r = {STORE, ITEM, (uint16_t)(now_local() / 86400 + 1), 0};
    send(ESP_PREDICT_REQUEST, p, esp_predict_request_encode(&r, p), next_seq++);
    last_predict = now;
  }
}
