/** The package's version, read once from package.json (two levels up from src/appliance/ and dist/appliance/). */
import { readFileSync } from 'node:fs';

export const MEMFABRIC_VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
