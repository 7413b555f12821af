// Minimal Payload 3 for MovieGen's integration tests: REST only, SQLite, one API-key user.
// The two media collections below are also the definitions MovieGen ships (see README.md).
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'

import { sqliteAdapter } from '@payloadcms/db-sqlite'
import { buildConfig } from 'payload'
import type { CollectionConfig, Field } from 'payload'

const env = (name: string, fallback?: string): string => {
  const value = process.env[name] ?? fallback
  if (value === undefined || value === '') throw new Error(`${name} must be set`)
  return value
}

const API_USER_EMAIL = 'moviegen@example.com'

// Generation metadata MovieGen writes for every completed task (both modes).
export const generationFields: Field[] = [
  { name: 'project_id', type: 'text', required: true, index: true },
  { name: 'task_id', type: 'text', required: true, index: true },
  { name: 'task_type', type: 'text', required: true },
  { name: 'media_key', type: 'text' },
  { name: 'duration', type: 'number' },
  { name: 'resolution', type: 'text' },
  { name: 'fps', type: 'number' },
  { name: 'file_size', type: 'number' },
  { name: 'model', type: 'text' },
  // Seeds go up to 2**63-1, past what a JS number holds exactly: kept as text.
  { name: 'seed', type: 'text' },
  { name: 'format', type: 'text' },
  // Everything else the take recorded (codecs, sample rate, clips, ...).
  { name: 'details', type: 'json' },
]

const Users: CollectionConfig = {
  slug: 'users',
  auth: { useAPIKey: true },
  fields: [],
}

// PAYLOAD_MEDIA_MODE=url: the file stays in R2; the document holds its URL.
export const Media: CollectionConfig = {
  slug: 'media',
  fields: [
    { name: 'url', type: 'text', required: true },
    { name: 'content_type', type: 'text' },
    ...generationFields,
  ],
}

// PAYLOAD_MEDIA_MODE=upload: the file is sent as multipart and Payload stores its own copy.
export const MediaUploads: CollectionConfig = {
  slug: 'media_uploads',
  upload: {
    staticDir: env('PAYLOAD_TEST_UPLOAD_DIR', path.join(os.tmpdir(), 'moviegen-payload-uploads')),
  },
  fields: [
    // Where MovieGen itself stored the take (R2 or the local store), for reference.
    { name: 'source_url', type: 'text' },
    ...generationFields,
  ],
}

export default buildConfig({
  secret: env('PAYLOAD_SECRET'),
  admin: { user: Users.slug },
  collections: [Users, Media, MediaUploads],
  db: sqliteAdapter({ client: { url: `file:${env('PAYLOAD_TEST_DB')}` } }),
  // Tests must not talk to anything but 127.0.0.1, nor write generated files into the repository.
  telemetry: false,
  typescript: { autoGenerate: false },
  graphQL: { disable: true },
  onInit: async (payload) => {
    const apiKey = process.env.PAYLOAD_TEST_API_KEY
    if (!apiKey) return
    const existing = await payload.find({
      collection: 'users',
      where: { email: { equals: API_USER_EMAIL } },
      limit: 1,
    })
    if (existing.totalDocs > 0) return
    await payload.create({
      collection: 'users',
      data: {
        email: API_USER_EMAIL,
        // Nobody logs in with it: the key is the only way in.
        password: randomBytes(24).toString('hex'),
        enableAPIKey: true,
        apiKey,
      },
    })
  },
})
