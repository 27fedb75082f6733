// Pins the Open Service Mesh module whose cmd/osm-bootstrap/crds/ hold the official SMI and OSM
// CRDs the schema tests compare with; go.sum holds its checksum. Nothing is built from it.
module gitmesh.local/testenv/osm-crds

go 1.21

require github.com/openservicemesh/osm v1.2.4
