// Next config for the test Payload app: withPayload wires Payload's server-side packages in.
import { withPayload } from '@payloadcms/next/withPayload'

/** @type {import('next').NextConfig} */
const nextConfig = {
  // One build folder per running instance: `next dev` locks its folder, and tests in two
  // sessions (or two fixtures) may run the app at the same time.
  distDir: process.env.PAYLOAD_TEST_DIST_DIR || '.next',
  // Next adds the build folder's type globs to the tsconfig it is given: hand it a per-instance
  // one (extending tsconfig.json) so that the committed file stays as it is.
  typescript: { tsconfigPath: process.env.PAYLOAD_TEST_TSCONFIG || 'tsconfig.json' },
  // The app lives inside a Python repository: keep Next from hunting for a workspace root above it.
  turbopack: { root: import.meta.dirname },
  outputFileTracingRoot: import.meta.dirname,
}

export default withPayload(nextConfig)
