// The dataset page's maps: each <div class="map"> draws the GeoJSON of the <script
// type="application/json"> whose id is the div's id + "-data", with the hub's own copy of
// Leaflet. No tiles unless the operator set KHAZNA_MAP_TILES_URL (the div's data-tiles):
// by default the map asks nothing of any other server.
"use strict";
document.querySelectorAll("div.map").forEach(function (box) {
  var source = document.getElementById(box.id + "-data");
  if (!source || typeof L === "undefined") return;
  var map = L.map(box, { attributionControl: false, scrollWheelZoom: false });
  if (box.dataset.tiles) {
    L.tileLayer(box.dataset.tiles, { maxZoom: 19 }).addTo(map);
  }
  // A raster item: its own tiles, from the hub, under its footprint; a switch hides them.
  if (box.dataset.xyz) {
    var image = L.tileLayer(box.dataset.xyz, { maxZoom: 18 }).addTo(map);
    var shown = {};
    shown[box.dataset.imageLabel || "Image"] = image;
    L.control.layers(null, shown, { collapsed: false }).addTo(map);
  }
  var layer = L.geoJSON(JSON.parse(source.textContent), {
    style: { color: "#1f5c54", weight: 2, fillOpacity: box.dataset.xyz ? 0 : 0.25 },
    // Points as SVG circles, so no marker image is fetched.
    pointToLayer: function (feature, at) {
      return L.circleMarker(at, { radius: 6 });
    },
  }).addTo(map);
  var bounds = layer.getBounds();
  if (bounds.isValid()) {
    map.fitBounds(bounds, { padding: [12, 12], maxZoom: 16 });
  } else {
    map.setView([0, 0], 1);
  }
});
