#!/bin/sh
# Prints the Secrets deploy/base needs, with fresh random credentials, as YAML for kubectl:
#
#   deploy/secrets.sh | kubectl apply -f -                 # before the first kubectl apply -k
#   deploy/secrets.sh redis | kubectl apply -f -           # rotate one group (docs/security.md)
#
# Groups (all when none is named): nats (the server's users and route, and each component's
# password: generated together, they always match), redis, job-signing, manager-api,
# proxy-api-keys. No credential is kept in git: the manifests only name these Secrets, and a pod
# whose Secret is missing does not start (fail closed). Needs only a POSIX shell, od and tr.
set -eu

NAMESPACE=eventing
NATS_REPLICAS=3  # the StatefulSet's replicas: one route per node

# 32 random alphanumeric characters (~190 bits): safe unquoted in nats.conf, URLs and YAML.
random() {
    LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32
}

secret() {  # secret NAME: the header of one Secret; its stringData follows
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n' \
        "$1" "$NAMESPACE"
    printf '  labels:\n    app.kubernetes.io/part-of: eventing\ntype: Opaque\nstringData:\n'
}

# The JetStream API subjects that look a stream up, create it and update its limits (which
# eventing/nats/client.py's ensure_stream does at each connect), quoted for nats.conf.
owns_stream() {
    printf '"$JS.API.STREAM.INFO.%s", "$JS.API.STREAM.CREATE.%s", "$JS.API.STREAM.UPDATE.%s"' \
        "$1" "$1" "$1"
}

nats() {
    proxy=$(random) manager=$(random) workers=$(random) route=$(random)
    # JS_STREAM_NAME, JS_DLQ_STREAM_NAME, JS_ARCHIVE_STREAM_NAME, JS_LEDGER_STREAM_NAME (their
    # defaults) and the workers' attempts bucket.
    stream=sap dead_letters=sap-dlq archive=sap-archive ledger=sap-ledger
    bucket=KV_eventing-attempts
    secret eventing-nats-server
    # Each user publishes and subscribes only what its component does (eventing/nats/): replies
    # to its requests (PubAcks, API answers, the manager's pulled events) come back on its own
    # inbox, _INBOX_<user>.> (NATS_INBOX_PREFIX in its Deployment), where no other user may
    # listen; JetStream's API is limited to the streams it owns.
    cat <<EOF
  accounts.conf: |
    accounts {
      EVENTING {
        jetstream: enabled
        users: [
          # The proxy publishes events and makes sure the event stream exists.
          {
            user: proxy, password: $proxy
            permissions: {
              publish: { allow: ["kyma.>", $(owns_stream $stream)] }
              subscribe: { allow: ["_INBOX_proxy.>"] }
            }
          }
          # The manager owns the streams and every consumer, pulls, and dead-letters the
          # backlog beyond MAX_BACKLOG (a publish on dlq.>, then the event's ack). It keeps the
          # replay archive (deleted when EVENT_ARCHIVE_MAX_AGE=0), reads its first and last
          # events, and pulls its replay consumers like the live ones. Its API reads the
          # delivery ledger and the dead letters through consumers of their own, looks an event
          # up in the event stream, pulls redrives and dead-letter sinks from sap-dlq (acking
          # the letters it skips), purges dead letters, and notes redrives in the ledger.
          {
            user: manager, password: $manager
            permissions: {
              publish: { allow: [$(owns_stream $stream), $(owns_stream $dead_letters),
                                 "\$JS.API.CONSUMER.LIST.$stream", "\$JS.API.CONSUMER.INFO.$stream.>",
                                 "\$JS.API.CONSUMER.CREATE.$stream.>",
                                 "\$JS.API.CONSUMER.DURABLE.CREATE.$stream.>",
                                 "\$JS.API.CONSUMER.DELETE.$stream.>",
                                 "\$JS.API.CONSUMER.MSG.NEXT.$stream.>",
                                 "\$JS.ACK.$stream.>", "dlq.>",
                                 $(owns_stream $archive), "\$JS.API.STREAM.DELETE.$archive",
                                 "\$JS.API.STREAM.MSG.GET.$archive",
                                 "\$JS.API.CONSUMER.INFO.$archive.>",
                                 "\$JS.API.CONSUMER.CREATE.$archive.>",
                                 "\$JS.API.CONSUMER.DURABLE.CREATE.$archive.>",
                                 "\$JS.API.CONSUMER.DELETE.$archive.>",
                                 "\$JS.API.CONSUMER.MSG.NEXT.$archive.>",
                                 "\$JS.ACK.$archive.>",
                                 "\$JS.API.STREAM.MSG.GET.$stream",
                                 "\$JS.API.STREAM.MSG.GET.$dead_letters",
                                 "\$JS.API.STREAM.MSG.DELETE.$dead_letters",
                                 "\$JS.API.CONSUMER.LIST.$dead_letters",
                                 "\$JS.API.CONSUMER.INFO.$dead_letters.>",
                                 "\$JS.API.CONSUMER.CREATE.$dead_letters.>",
                                 "\$JS.API.CONSUMER.DURABLE.CREATE.$dead_letters.>",
                                 "\$JS.API.CONSUMER.DELETE.$dead_letters.>",
                                 "\$JS.API.CONSUMER.MSG.NEXT.$dead_letters.>",
                                 "\$JS.ACK.$dead_letters.>",
                                 $(owns_stream $ledger), "ledger.>",
                                 "\$JS.API.STREAM.MSG.GET.$ledger",
                                 "\$JS.API.CONSUMER.INFO.$ledger.>",
                                 "\$JS.API.CONSUMER.CREATE.$ledger",
                                 "\$JS.API.CONSUMER.CREATE.$ledger.>",
                                 "\$JS.API.CONSUMER.DELETE.$ledger.>",
                                 "\$JS.API.CONSUMER.MSG.NEXT.$ledger.>",
                                 "\$JS.FC.$ledger.>"] }
              subscribe: { allow: ["_INBOX_manager.>"] }
            }
          }
          # The workers ack (and nak, and keep alive) the messages of the event stream, the
          # archive (replays) and sap-dlq (redrives, dead-letter sinks), count attempts in their
          # key-value bucket, publish dead letters (and replace or delete a redriven one), and
          # write the delivery ledger.
          {
            user: workers, password: $workers
            permissions: {
              publish: { allow: ["\$JS.ACK.$stream.>", "\$JS.ACK.$archive.>", "dlq.>", $(owns_stream $dead_letters),
                                 "\$JS.ACK.$dead_letters.>",
                                 "\$JS.API.STREAM.MSG.GET.$dead_letters",
                                 "\$JS.API.STREAM.MSG.DELETE.$dead_letters",
                                 $(owns_stream $ledger), "ledger.>",
                                 "\$JS.API.STREAM.INFO.$bucket", "\$JS.API.STREAM.CREATE.$bucket",
                                 "\$JS.API.STREAM.PURGE.$bucket",
                                 "\$JS.API.STREAM.MSG.GET.$bucket",
                                 "\$JS.API.DIRECT.GET.$bucket.>", "\$KV.eventing-attempts.>"] }
              subscribe: { allow: ["_INBOX_workers.>"] }
            }
          }
        ]
      }
      SYS {}
    }
    system_account: SYS
  cluster.conf: |
    authorization {
      user: route
      password: $route
      timeout: 2
    }
    routes: [
EOF
    node=0
    while [ "$node" -lt "$NATS_REPLICAS" ]; do
        printf '      nats://route:%s@eventing-nats-%d.eventing-nats-headless:6222\n' "$route" "$node"
        node=$((node + 1))
    done
    printf '    ]\n'
    secret eventing-nats-users
    printf '  proxy: %s\n  manager: %s\n  workers: %s\n' "$proxy" "$manager" "$workers"
}

redis() {
    secret eventing-redis
    printf '  password: %s\n' "$(random)"
}

job_signing() {
    secret eventing-job-signing
    printf '  key: %s\n' "$(random)"
}

manager_api() {
    secret eventing-manager-api
    printf '  token: %s\n' "$(random)"
}

proxy_api_keys() {
    # One publisher to start with; edit the list (PROXY_API_KEYS_FILE's shape, README) and
    # apply it again: the proxy reloads the file when the kubelet updates it.
    secret eventing-proxy-api-keys
    cat <<EOF
  api-keys.yaml: |
    - name: example-publisher
      key: "$(random)"
      sources: ["example", "example-*"]
      types: ["*"]
EOF
}

[ "$#" -gt 0 ] || set -- nats redis job-signing manager-api proxy-api-keys
for group in "$@"; do
    case "$group" in
        nats) nats ;;
        redis) redis ;;
        job-signing) job_signing ;;
        manager-api) manager_api ;;
        proxy-api-keys) proxy_api_keys ;;
        *) echo "$0: no group $group (nats, redis, job-signing, manager-api, proxy-api-keys)" >&2
           exit 2 ;;
    esac
done
