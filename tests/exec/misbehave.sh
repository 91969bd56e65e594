#!/bin/sh
# Exec store test script that misbehaves; $1 says how.
case "$1" in
  status)
    # A good answer, with an exit status nobody configured by default.
    echo '{"lookup": {"id": {"type": "localpart", "value": "dave"}}}'
    exit 3 ;;
  slow)
    # A child of its own, to show that the whole process group is killed.
    sleep 30 &
    echo $! > "$2"
    wait ;;
  garbage)
    echo 'this is not {json' ;;
  binary)
    printf '\377\376\n' ;;
  *)
    exit 2 ;;
esac
