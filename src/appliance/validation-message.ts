/**
 * Turns the admin API's JSON-schema failures into sentences a user can act on. Fastify's own
 * text is the schema's ("body must have required property 'size'", "body/size must be >= 1,
 * body/size must be string, body/size must match a schema in anyOf"): right for the schema's
 * author, not for someone who typed `--size 0`. Each message here names the field, says what it
 * must be, and for an unknown field lists the fields the route takes.
 */
import type { FastifySchemaValidationError } from 'fastify';

/** What each field of a body is, in words, for the messages below (by field name). */
const FIELD_MEANS: Record<string, string> = {
  size: 'a size: a whole number of bytes, 1 or more, or a string such as "1GiB"',
  name: 'a name of 1 to 128 characters',
  tenant: 'a tenant name of 1 to 64 characters',
};

export function describeValidation(
  errors: readonly FastifySchemaValidationError[],
  schema: { properties?: Record<string, unknown> } | undefined,
): string {
  const error = errors[0];
  if (error === undefined) return 'invalid request';
  const params = error.params as Record<string, unknown>;
  const allowed = Object.keys(schema?.properties ?? {});
  const allowedText = allowed.length > 0 ? ` (this request takes: ${allowed.join(', ')})` : '';
  if (error.keyword === 'additionalProperties') {
    return `unknown field '${String(params.additionalProperty)}'${allowedText}`;
  }
  if (error.keyword === 'required') {
    const field = String(params.missingProperty);
    return `missing field '${field}'${FIELD_MEANS[field] ? `: give ${FIELD_MEANS[field]}` : ''}`;
  }
  const path = error.instancePath.replace(/^\//, '').replaceAll('/', '.');
  if (path === '') {
    return error.keyword === 'type'
      ? 'the request body must be a JSON object'
      : `invalid request: ${error.message ?? error.keyword}`;
  }
  const field = path.split('.')[0]!;
  const means = FIELD_MEANS[field];
  if (means !== undefined) return `field '${path}' must be ${means}`;
  if (error.keyword === 'type') return `field '${path}' must be of type ${String(params.type)}`;
  return `field '${path}' ${error.message ?? `fails the ${error.keyword} check`}`;
}
