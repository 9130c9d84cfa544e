#!/bin/sh
# A test service for the service module's tests: a real LSB init script
# keeping a real background process, its pid file in @DIR@.
### BEGIN INIT INFO
# Provides:          haltest
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: halite test service
### END INIT INFO
PIDFILE=@DIR@/haltest.pid
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "$1" in
  start)
    running || { setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $! > "$PIDFILE"; }
    echo "started" ;;
  stop)
    running && kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
    echo "stopped" ;;
  restart|reload) "$0" stop; "$0" start ;;
  status)
    if running; then echo "haltest is running"; exit 0; fi
    echo "haltest is not running"; exit 3 ;;
  *) echo "usage: $0 start|stop|restart|reload|status" >&2; exit 2 ;;
esac
