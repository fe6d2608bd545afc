<?php
// Publish one purge_keys job to fastly-purge-worker, wait for its result and print it.
//
// Usage:
//   composer require php-amqplib/php-amqplib
//   AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2F php producer.php SERVICE_ID KEY [KEY...]
//
// The exit code is 0 when the job succeeded, 1 when it failed, was rejected or got no result
// in time. The job contract is in docs/jobs.md.
//
// Fire and forget: leave out reply_to and the reply queue, and exit after
// wait_for_pending_acks_returns(). The worker then publishes the result to the fastly.results
// queue, which another consumer must read. Keep the publisher confirms and the mandatory flag
// in both variants, so that a job RabbitMQ does not take is reported instead of lost.

declare(strict_types=1);

require __DIR__ . '/vendor/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;

const JOBS_QUEUE = 'fastly.jobs';
const TIMEOUT_SECONDS = 30;

if ($argc < 3) {
    fwrite(STDERR, "usage: php producer.php SERVICE_ID KEY [KEY...]\n");
    exit(2);
}
$serviceId = $argv[1];
$keys = array_slice($argv, 2);

// php-amqplib takes the connection parameters one by one, so split the URL. The vhost is the
// URL path without its leading slash, percent-decoded ("%2F" is the default vhost "/").
$url = parse_url(getenv('AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/%2F');
$connection = new AMQPStreamConnection(
    $url['host'] ?? '127.0.0.1',
    $url['port'] ?? 5672,
    rawurldecode($url['user'] ?? 'guest'),
    rawurldecode($url['pass'] ?? 'guest'),
    isset($url['path']) && $url['path'] !== '/' ? rawurldecode(substr($url['path'], 1)) : '/'
);
$channel = $connection->channel();

// A server-named queue that only this connection can use. RabbitMQ deletes it when the
// connection closes. Declare it before publishing, so it exists when the result comes.
// Arguments: queue, passive, durable, exclusive, auto_delete.
[$replyQueue] = $channel->queue_declare('', false, false, true, true);

// Publisher confirms, and a return listener for a job that no queue took (mandatory flag).
$problem = null;
$channel->confirm_select();
$channel->set_nack_handler(function () use (&$problem): void {
    $problem = 'RabbitMQ rejected the job (publisher nack); publish it again';
});
$channel->set_return_listener(function (int $replyCode, string $replyText) use (&$problem): void {
    $problem = sprintf('RabbitMQ could not route the job to queue %s: %d %s', JOBS_QUEUE, $replyCode, $replyText);
});

$jobId = bin2hex(random_bytes(16));
$job = ['id' => $jobId, 'type' => 'purge_keys', 'service_id' => $serviceId, 'keys' => $keys];
$message = new AMQPMessage(json_encode($job, JSON_THROW_ON_ERROR | JSON_UNESCAPED_SLASHES), [
    'content_type' => 'application/json',
    'delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT,
    'message_id' => $jobId,
    'correlation_id' => $jobId,
    'reply_to' => $replyQueue,
]);
$channel->basic_publish($message, '', JOBS_QUEUE, true);
$channel->wait_for_pending_acks_returns(TIMEOUT_SECONDS);
if ($problem !== null) {
    fwrite(STDERR, $problem . "\n");
    exit(1);
}

// The worker may publish a second result for the same job after a redelivery, so match on
// correlation_id and take the first one.
$result = null;
$channel->basic_consume($replyQueue, '', false, true, false, false, function (AMQPMessage $reply) use (&$result, $jobId): void {
    if ($reply->has('correlation_id') && $reply->get('correlation_id') === $jobId) {
        $result = json_decode($reply->getBody(), false, 512, JSON_THROW_ON_ERROR);
    }
});
$deadline = microtime(true) + TIMEOUT_SECONDS;
try {
    while ($result === null) {
        $channel->wait(null, false, max(0.001, $deadline - microtime(true)));
    }
} catch (AMQPTimeoutException $e) {
    // $result stays null.
}
$channel->close();
$connection->close();

if ($result === null) {
    fwrite(STDERR, sprintf("no result for job %s within %d s; is a worker consuming %s?\n", $jobId, TIMEOUT_SECONDS, JOBS_QUEUE));
    exit(1);
}
echo json_encode($result, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
exit($result->status === 'succeeded' ? 0 : 1);
