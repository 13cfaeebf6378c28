// A minimal host stand-in for <Arduino.h>: just what firmware_bridge/firmware/shelf_label uses.
//
// Test-only (tests/unit/test_firmware_sketch.py), never shipped as firmware. Serial is stdin/stdout
// (raw bytes, non-blocking reads); millis() is simulated time that shim_main.cpp advances by
// SHIM_MS_PER_LOOP each loop(); the button on pin 2 reads LOW for one loop after the process gets
// SIGUSR1 (a "press"), HIGH otherwise.
#ifndef EDGESHIP_ARDUINO_SHIM_H
#define EDGESHIP_ARDUINO_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HIGH 1
#define LOW 0
#define INPUT 0
#define OUTPUT 1
#define INPUT_PULLUP 2

class HostSerial {
 public:
  void begin(unsigned long baud);
  int available();
  int read();
  size_t write(const uint8_t *data, size_t n);
  size_t write(uint8_t b) { return write(&b, 1); }
};
extern HostSerial Serial;

unsigned long millis();
void delay(unsigned long ms);
void pinMode(uint8_t pin, uint8_t mode);
int digitalRead(uint8_t pin);
int analogRead(uint8_t pin);
void randomSeed(unsigned long seed);
long random(long howbig);

void setup();
void loop();

#endif
