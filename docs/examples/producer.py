#!/usr/bin/env python3
"""Publish one purge_keys job to fastly-purge-worker, wait for its result and print it.

Usage:
    pip install pika
    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F python3 producer.py SERVICE_ID KEY [KEY...]

The exit code is 0 when the job succeeded, 1 when it failed, was rejected or got no result in
time. The job contract is in docs/jobs.md.

Fire and forget: leave out reply_to and the reply queue, and exit after basic_publish returns.
The worker then publishes the result to the fastly.results queue, which another consumer must
read. Keep confirm_delivery() and mandatory=True in both variants: basic_publish raises when
RabbitMQ does not take the job, so no job is lost silently.
"""

import json
import os
import sys
import uuid

import pika

JOBS_QUEUE = "fastly.jobs"
TIMEOUT_SECONDS = 30


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    service_id, keys = sys.argv[1], sys.argv[2:]
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        # A server-named queue that only this connection can use. RabbitMQ deletes it when the
        # connection closes. Declare it before publishing, so it exists when the result comes.
        reply_queue = channel.queue_declare(queue="", exclusive=True).method.queue
        # Publisher confirms: basic_publish raises NackError if RabbitMQ rejected the job and,
        # with mandatory=True, UnroutableError if no queue named fastly.jobs exists yet.
        channel.confirm_delivery()

        job_id = str(uuid.uuid4())
        job = {"id": job_id, "type": "purge_keys", "service_id": service_id, "keys": keys}
        try:
            channel.basic_publish(
                exchange="",
                routing_key=JOBS_QUEUE,
                body=json.dumps(job).encode(),
                properties=pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=job_id,
                    correlation_id=job_id,
                    reply_to=reply_queue,
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            print(f"RabbitMQ could not route the job: queue {JOBS_QUEUE} does not exist",
                  file=sys.stderr)
            return 1
        except pika.exceptions.NackError:
            print("RabbitMQ rejected the job (publisher nack); publish it again", file=sys.stderr)
            return 1

        # The worker may publish a second result for the same job after a redelivery, so match
        # on correlation_id and take the first one.
        for method, properties, body in channel.consume(
            reply_queue, auto_ack=True, inactivity_timeout=TIMEOUT_SECONDS
        ):
            if method is None:
                print(f"no result for job {job_id} within {TIMEOUT_SECONDS} s; "
                      f"is a worker consuming {JOBS_QUEUE}?", file=sys.stderr)
                return 1
            if properties.correlation_id == job_id:
                result = json.loads(body)
                print(json.dumps(result, indent=2))
                return 0 if result["status"] == "succeeded" else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
