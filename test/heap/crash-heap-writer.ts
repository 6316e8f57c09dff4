/**
 * Heap-level crash-test writer (a child process): like crash-writer.ts, with map, struct and
 * allocator operations. argv: image seed maxOps [crashAtSync powerSeed]
 */
import { Heap } from '../../src/heap/heap.js';
import { HEAP_BUDGET, applyToHeap, collections, heapOperations, readModel } from './crash-heap-workload.js';

const [path, seedText, maxOpsText, crashText, powerSeedText] = process.argv.slice(2);
const heap = await Heap.open({
  path: path!,
  budget: HEAP_BUDGET,
  checkpointIntervalMs: 0,
  ...(crashText ? { powerLoss: { crashAtSync: Number(crashText), seed: Number(powerSeedText) } } : {}),
});
const c = collections(heap);
const model = readModel(heap, c);
process.stdout.write('OPEN\n');
let done = 0;
for (const op of heapOperations(Number(seedText), model)) {
  if (done >= Number(maxOpsText)) break;
  if (op.kind === 'checkpoint') {
    process.stdout.write(`BEGIN ${done}\n`);
    const report = await heap.checkpoint();
    process.stdout.write(`COMMIT ${report.generation} ${done}\n`);
  } else {
    applyToHeap(heap, c, op);
  }
  done++;
  if (done % 8 === 0) await new Promise((resolve) => setImmediate(resolve));
}
await heap.close({ checkpoint: false });
process.stdout.write('DONE\n');
