/**
 * `npm run bench [-- --quick] [-- --only NAME]`: runs every suite, prints one table, writes
 * bench/results.json (an array of { id, unit, value, baseline, baselineValue, ratio, load }).
 * Each suite's start and end load average is printed, with a warning when other work was running.
 */
import { writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import {
  describeLoad,
  printTable,
  suiteLoad,
  type BenchContext,
  type Row,
  type Suite,
  type SuiteLoad,
} from './harness.js';
import { applianceSuite } from './appliance.bench.js';
import { memorySuite } from './memory.bench.js';
import { fabricSuite } from './fabric.bench.js';
import { tierSuite } from './tier.bench.js';
import { hostileSuite } from './hostile.bench.js';
import { restartSuite } from './restart.bench.js';
import { tlsSuite } from './tls.bench.js';
import { authSuite } from './auth.bench.js';
import { nbdStoreSuite } from './nbd-store.bench.js';
import { heapSuite } from './heap.bench.js';
import { heapValuesSuite } from './heap-values.bench.js';
import { heapCollectionsSuite } from './heap-collections.bench.js';
import { durableSuite } from './durable.bench.js';
import { fleetSuite } from './fleet.bench.js';
import { mergerSuite } from './merger.bench.js';
import { regionMigrationSuite } from './region-migration.bench.js';
import { postcopySuite } from './postcopy.bench.js';
import { migrateSuite } from './migrate.bench.js';
import { standbySuite } from './standby.bench.js';

const suites: Suite[] = [
  memorySuite,
  mergerSuite,
  applianceSuite,
  fabricSuite,
  tierSuite,
  hostileSuite,
  restartSuite,
  tlsSuite,
  authSuite,
  nbdStoreSuite,
  heapSuite,
  heapValuesSuite,
  heapCollectionsSuite,
  durableSuite,
  fleetSuite,
  regionMigrationSuite,
  postcopySuite,
  migrateSuite,
  standbySuite,
];

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string', multiple: true },
    repeats: { type: 'string' },
  },
});

const quick = values.quick ?? false;
const repeats = values.repeats ? Number(values.repeats) : quick ? 3 : 7;
const rows: Row[] = [];
const context: BenchContext = {
  quick,
  repeats,
  record(row) {
    const ratio = row.baselineValue === 0 ? Number.NaN : row.value / row.baselineValue;
    rows.push({ ...row, ratio });
    console.error(
      `  ${row.id}: ${row.value.toPrecision(4)} ${row.unit} (baseline ${row.baselineValue.toPrecision(4)})`,
    );
  },
  log(message) {
    console.error(`  ${message}`);
  },
};

const started = performance.now();
const cores = availableParallelism();
const loads: Array<[string, SuiteLoad]> = [];
for (const suite of suites) {
  if (values.only && !values.only.includes(suite.name)) continue;
  const loadAtStart = loadavg()[0]!;
  console.error(
    `[bench] ${suite.name}${quick ? ' (quick)' : ''}, medians of ${repeats} runs, load average ${loadAtStart.toFixed(2)} on ${cores} cores`,
  );
  const first = rows.length;
  await suite.run(context);
  const load = suiteLoad(loadAtStart, loadavg()[0]!, cores);
  for (let i = first; i < rows.length; i++) rows[i]!.load = load;
  loads.push([suite.name, load]);
  console.error(`[bench] ${describeLoad(suite.name, load)}`);
}
console.log(printTable(rows));
console.log(
  `\n${rows.length} figures in ${((performance.now() - started) / 1000).toFixed(1)} s; ratio = ours / baseline`,
);
for (const [name, load] of loads) console.log(describeLoad(name, load));
const results = rows.map(({ id, unit, value, baseline, baselineValue, ratio, load }) => ({
  id,
  unit,
  value,
  baseline,
  baselineValue,
  ratio,
  load,
}));
writeFileSync(new URL('./results.json', import.meta.url), `${JSON.stringify(results, null, 2)}\n`);
