/**
 * A client process of the leased-chunks test (etcd-leased-chunks.test.ts):
 *
 *   node --import tsx test/catalog/etcd-leased-chunks-worker.ts <etcd,urls> <admin-url> <region> <owner>
 *        <chunk-size> <ttl-seconds> <count>
 *
 * Claims one run of `count` chunks under its own etcd lease, fills it with 0xc7 over NBD
 * through a bounded view, prints one JSON line {lease, offset, length}, and then holds the
 * chunks until it is killed (its lease kept alive meanwhile).
 */
import { LeasedSubAllocator } from '../../src/catalog/leased-chunks.js';

async function main(): Promise<void> {
  const [etcd, appliance, region, owner, chunkSize, ttl, count] = process.argv.slice(2);
  const sub = new LeasedSubAllocator({
    etcd: etcd!.split(','),
    appliance: appliance!,
    region: region!,
    owner: owner!,
    chunkSize: Number(chunkSize),
    ttlSeconds: Number(ttl),
    ...(process.env.MEMFABRIC_TOKEN ? { token: process.env.MEMFABRIC_TOKEN } : {}),
  });
  const chunk = await sub.claim({ count: Number(count) });
  const view = await chunk.open();
  await view.write(0, Buffer.alloc(chunk.length, 0xc7));
  await view.flush();
  process.stdout.write(
    `${JSON.stringify({ lease: sub.leaseIdentifier, offset: chunk.offset, length: chunk.length })}\n`,
  );
  // Hold the chunks: the lease's keep-alive timer keeps the process running until it is killed.
  setInterval(() => undefined, 1 << 30);
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
