#!/bin/bash
# nginx healthcheck without curl: an HTTP/1.0 request over bash's /dev/tcp.
exec 3<>/dev/tcp/127.0.0.1/80 || exit 1
printf 'GET /nginx-health HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 4 status <&3 || exit 1
[[ "$status" == *" 200 "* ]]
