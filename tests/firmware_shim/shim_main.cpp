// Drives an Arduino sketch on the host: setup(), then loop() until stdin closes or SHIM_LOOPS runs.
// Test-only; see Arduino.h. Each loop waits up to 1 ms for serial input, then simulated time
// advances by SHIM_MS_PER_LOOP (default 50 ms), so the sketch's timers fire quickly but in order.
#include "Arduino.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

HostSerial Serial;

static unsigned long now_ms = 0;
static volatile sig_atomic_t press_requested = 0;
static bool pressed_this_loop = false;
static bool input_closed = false;
static uint8_t rx_buf[512];
static size_t rx_len = 0, rx_at = 0;

static void on_press(int) { press_requested = 1; }

static void fill() {
  if (rx_at < rx_len || input_closed) return;
  ssize_t n = ::read(0, rx_buf, sizeof rx_buf);
  if (n > 0) {
    rx_len = (size_t)n;
    rx_at = 0;
  } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
    input_closed = true;
  }
}

void HostSerial::begin(unsigned long) { fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK); }
int HostSerial::available() {
  fill();
  return (int)(rx_len - rx_at);
}
int HostSerial::read() {
  fill();
  return rx_at < rx_len ? rx_buf[rx_at++] : -1;
}
size_t HostSerial::write(const uint8_t *data, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(1, data + done, n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {  // stdout may share stdin's non-blocking pty
        struct pollfd p = {1, POLLOUT, 0};
        poll(&p, 1, 100);
        continue;
      }
      _exit(3);  // the reader went away
    }
    done += (size_t)w;
  }
  return n;
}

unsigned long millis() { return now_ms; }
void delay(unsigned long ms) { now_ms += ms; }
void pinMode(uint8_t, uint8_t) {}
int digitalRead(uint8_t pin) { return pin == 2 && pressed_this_loop ? LOW : HIGH; }
int analogRead(uint8_t) { return 517; }
void randomSeed(unsigned long seed) { srand((unsigned)seed); }
long random(long howbig) { return howbig > 0 ? rand() % howbig : 0; }

int main() {
  signal(SIGUSR1, on_press);
  const char *step = getenv("SHIM_MS_PER_LOOP");
  const char *loops = getenv("SHIM_LOOPS");
  unsigned long ms_per_loop = step ? strtoul(step, nullptr, 10) : 50;
  long max_loops = loops ? strtol(loops, nullptr, 10) : -1;
  setup();
  for (long i = 0; max_loops < 0 || i < max_loops; i++) {
    // a press latched here is seen by this loop() after it drained serial input written before it
    pressed_this_loop = press_requested != 0;
    press_requested = 0;
    loop();
    if (input_closed) break;
    struct pollfd p = {0, POLLIN, 0};
    poll(&p, 1, 1);
    now_ms += ms_per_loop;
  }
  return 0;
}
