/** Fork test child: opens a fork, doubles every value the table names, allocates, checkpoints 10 times. */
import { Heap } from '../../src/heap/heap.js';

const heap = await Heap.open({ path: process.argv[2]!, budget: '512KiB', checkpointIntervalMs: 0 });
const table = heap.root('table');
for (let round = 0; round < 10; round++) {
  for (let i = 0; i < 200; i++) heap.space.writeU32(heap.space.readF64(table + i * 8), 2 * i);
  heap.alloc(3000);
  await heap.checkpoint();
}
await heap.close();
