"""FHIR operations, one module each: $validate, and later $find/$hold/$book, $everything, $export, $submit, …"""
