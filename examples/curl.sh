#!/bin/sh
# Every command of the deepstream HTTP API against a running moonstream:
#   bin/moonstream start examples/config.lua &   then   sh examples/curl.sh
URL=${URL:-http://127.0.0.1:6020}
api() { echo "> $1"; curl -s "$URL/api" -H 'Content-Type: application/json' -d "$1"; echo; }

api '{"body":[{"topic":"event","action":"emit","eventName":"chat","data":{"text":"hi"}}]}'
api '{"body":[{"topic":"record","action":"write","recordName":"users/ann","data":{"name":"Ann","tags":[]}}]}'
api '{"body":[{"topic":"record","action":"write","recordName":"users/ann","path":"address.city","data":"Oslo","version":2}]}'
api '{"body":[{"topic":"record","action":"read","recordName":"users/ann"}]}'
api '{"body":[{"topic":"record","action":"head","recordName":"users/ann"}]}'
api '{"body":[{"topic":"record","action":"write","recordName":"users/ann","data":{"stale":true},"version":1}]}'
api '{"body":[{"topic":"record","action":"notify","recordNames":["users/ann"]}]}'
api '{"body":[{"topic":"record","action":"delete","recordName":"users/ann"}]}'
api '{"body":[{"topic":"list","action":"write","listName":"todo","data":["milk","bread"]}]}'
api '{"body":[{"topic":"list","action":"read","listName":"todo"}]}'
api '{"body":[{"topic":"list","action":"delete","listName":"todo"}]}'
api '{"body":[{"topic":"rpc","action":"make","rpcName":"add-two","data":{"numA":1,"numB":2}}]}'
api '{"body":[{"topic":"rpc","action":"make","rpcName":"fail"}]}'
api '{"body":[{"topic":"presence","action":"query"}]}'
api '{"body":[{"topic":"presence","action":"query","names":["ann","bob"]}]}'
echo "> POST /api/auth"
curl -s "$URL/api/auth" -H 'Content-Type: application/json' -d '{"username":"ann"}'; echo
