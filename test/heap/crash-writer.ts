/**
 * Crash-test writer (a child process): runs the seeded workload on a heap image and prints
 * `BEGIN <op>` before each checkpoint and `COMMIT <generation> <op>` once it is committed,
 * where <op> counts the operations applied before the checkpoint. The test kills it with
 * SIGKILL at random moments, or the power-loss layer kills it at a chosen flush.
 *
 * argv: image seed maxOps [crashAtSync powerSeed]
 */
import { HeapImage } from '../../src/heap/image.js';
import { BUDGET, applyToSpace, operations } from './crash-workload.js';

const [path, seedText, maxOpsText, crashText, powerSeedText] = process.argv.slice(2);
const seed = Number(seedText);
const maxOps = Number(maxOpsText);
const image = await HeapImage.open({
  path: path!,
  budget: BUDGET,
  prefetch: 4,
  ...(crashText ? { powerLoss: { crashAtSync: Number(crashText), seed: Number(powerSeedText) } } : {}),
});
process.stdout.write('OPEN\n');
let done = 0;
for (const op of operations(seed)) {
  if (done >= maxOps) break;
  if (op.kind === 'checkpoint') {
    process.stdout.write(`BEGIN ${done}\n`);
    const report = await image.checkpoint();
    process.stdout.write(`COMMIT ${report.generation} ${done}\n`);
  } else {
    applyToSpace(image.space, op);
  }
  done++;
  // Let the parent's kill land between operations as well as inside checkpoints.
  if (done % 16 === 0) await new Promise((resolve) => setImmediate(resolve));
}
await image.close({ checkpoint: false });
process.stdout.write('DONE\n');
