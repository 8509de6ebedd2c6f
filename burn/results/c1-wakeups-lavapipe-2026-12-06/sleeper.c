// Wakes every 150 us, as cubecl's parked device-server thread does (PARK_STEP_SERVER).
#include <time.h>
int main(void) {
    struct timespec ts = {0, 150000};
    for (;;) nanosleep(&ts, 0);
}
